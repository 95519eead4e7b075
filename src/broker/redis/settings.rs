//! The Redis broker's own settings, taken from the node's `Config` once,
//! and the deployment's layout (standalone, Sentinel, Cluster) read from
//! the URL and flags.

use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::broker::{BrokerError, Retention};
use crate::config::Config;

/// What the Redis broker needs to know, and nothing else.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `--redis-url`: one URL, or several with Cluster or Sentinel.
    pub url: String,
    pub cluster: bool,
    pub sentinel_master: Option<String>,
    pub pool_size: usize,
    pub prefix: String,
    pub retention: Retention,
    /// Time Redis has to answer a command or a pub/sub ping.
    pub timeout: Duration,
}

impl RedisSettings {
    /// `None` without `--redis-url` (the embedded broker serves then).
    pub fn from_config(cfg: &Config) -> Option<RedisSettings> {
        Some(RedisSettings {
            url: cfg.redis_url.clone()?,
            cluster: cfg.redis_cluster,
            sentinel_master: cfg.redis_sentinel_master.clone(),
            pool_size: cfg.redis_pool_size,
            prefix: cfg.channel_prefix.clone(),
            retention: Retention {
                size: cfg.history_size,
                ttl: cfg.history_ttl,
            },
            timeout: cfg.redis_timeout,
        })
    }

    pub fn topology(&self) -> Result<Topology, BrokerError> {
        Topology::new(&self.url, self.cluster, self.sentinel_master.as_deref())
    }

    /// The URL without passwords, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

/// How the Redis deployment is laid out.
pub enum Topology {
    Standalone(String),
    /// `node` carries the credentials for the master.
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master: String,
        node: ConnectionInfo,
    },
    /// `node` carries the credentials for every cluster node.
    Cluster {
        seeds: Vec<ConnectionInfo>,
        node: ConnectionInfo,
    },
}

impl Topology {
    /// From `--redis-url` (one URL, or several comma-separated with
    /// `--redis-cluster` or `--redis-sentinel-master`).
    pub fn new(url: &str, cluster: bool, sentinel_master: Option<&str>) -> Result<Topology, BrokerError> {
        let infos = parse_urls(url)?;
        let first = infos
            .first()
            .cloned()
            .ok_or_else(|| BrokerError::Config("--redis-url is empty".into()))?;
        Ok(match (cluster, sentinel_master) {
            (true, _) => Topology::Cluster {
                seeds: infos,
                node: first,
            },
            (false, Some(master)) => {
                // Sentinels are reached without the master's credentials.
                let mut sentinels = Vec::new();
                for i in &infos {
                    let ConnectionAddr::Tcp(h, p) = i.addr() else {
                        return Err(BrokerError::Config(
                            "Sentinels must be plain redis:// addresses".into(),
                        ));
                    };
                    let info = format!("redis://{h}:{p}")
                        .into_connection_info()
                        .map_err(|e| BrokerError::Config(e.to_string()))?;
                    sentinels.push(info);
                }
                Topology::Sentinel {
                    sentinels,
                    master: master.to_owned(),
                    node: first,
                }
            }
            (false, None) if infos.len() > 1 => {
                return Err(BrokerError::Config(
                    "several --redis-url addresses need --redis-cluster or --redis-sentinel-master".into(),
                ));
            }
            (false, None) => Topology::Standalone(url.trim().to_owned()),
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Topology::Cluster { .. })
    }
}

/// Parses each of a comma-separated list of URLs.
fn parse_urls(list: &str) -> Result<Vec<ConnectionInfo>, BrokerError> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.into_connection_info()
                .map_err(|e| BrokerError::Config(format!("invalid --redis-url {:?}: {e}", redact(u))))
        })
        .collect()
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}://***@{}", &u[..s], &u[at + 1..]),
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Time allowed to open a connection (TCP, TLS, AUTH).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            redact("redis://u:p@a:1,redis://b:2"),
            "redis://***@a:1,redis://b:2"
        );
    }

    #[test]
    fn topologies_come_from_the_url_and_flags() {
        assert!(matches!(
            Topology::new("redis://a:1", false, None),
            Ok(Topology::Standalone(_))
        ));
        assert!(matches!(
            Topology::new("redis://a:1,redis://b:2", true, None),
            Ok(Topology::Cluster { seeds, .. }) if seeds.len() == 2
        ));
        assert!(matches!(
            Topology::new("redis://:pw@a:26379,redis://b:26379", false, Some("m")),
            Ok(Topology::Sentinel { sentinels, node, .. }) if sentinels.len() == 2 && node.redis_settings().password() == Some("pw")
        ));
        assert!(Topology::new("redis://a:1,redis://b:2", false, None).is_err());
    }
}
