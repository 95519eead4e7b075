//! Channel names: 1..=200 bytes of `[A-Za-z0-9_.:@-]`, validated once at the
//! edge and then shared as a cheap `Arc<str>`.

use std::fmt;
use std::sync::Arc;

pub const MAX_CHANNEL_LEN: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    #[error("channel name may only contain A-Z, a-z, 0-9, '_', '.', ':', '@' and '-'")]
    BadChar,
}

/// A validated channel name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(Arc<str>);

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-')
}

impl Channel {
    pub fn parse(name: &str) -> Result<Self, ChannelError> {
        Self::validate(name.as_bytes())?;
        Ok(Channel(Arc::from(name)))
    }

    /// The reserved channel of the Mercure hub's updates
    /// (`sse::mercure::MERCURE_CHANNEL`), which no client can name.
    pub fn mercure() -> Self {
        Channel(Arc::from(super::mercure::MERCURE_CHANNEL))
    }

    /// A channel name from the broker: a valid name, or the reserved one.
    pub fn parse_internal(name: &str) -> Result<Self, ChannelError> {
        Self::validate_internal(name.as_bytes())?;
        Ok(Channel(Arc::from(name)))
    }

    /// Checks a name from the broker: a valid name, or the reserved one.
    pub fn validate_internal(name: &[u8]) -> Result<(), ChannelError> {
        if name == super::mercure::MERCURE_CHANNEL.as_bytes() {
            return Ok(());
        }
        Self::validate(name)
    }

    /// Checks the naming rule without allocating.
    pub fn validate(name: &[u8]) -> Result<(), ChannelError> {
        if name.is_empty() {
            return Err(ChannelError::Empty);
        }
        if name.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::TooLong);
        }
        if !name.iter().all(|&b| allowed(b)) {
            return Err(ChannelError::BadChar);
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

impl std::borrow::Borrow<str> for Channel {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(Channel::parse("session:abc-DEF_1.2@x").is_ok());
        assert!(Channel::parse(&"a".repeat(200)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_bytes() {
        assert_eq!(Channel::parse(""), Err(ChannelError::Empty));
        assert_eq!(Channel::parse(&"a".repeat(201)), Err(ChannelError::TooLong));
        for bad in ["a b", "a/b", "a{b", "a}b", "é", "a\nb", "a\0b", "a*"] {
            assert_eq!(Channel::parse(bad), Err(ChannelError::BadChar), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn validation_matches_the_rule(s in "\\PC{0,210}") {
            let ok = !s.is_empty() && s.len() <= 200 && s.bytes().all(allowed);
            prop_assert_eq!(Channel::parse(&s).is_ok(), ok);
        }
    }
}
