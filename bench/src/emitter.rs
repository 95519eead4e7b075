//! The message `@socket.io/redis-emitter` publishes for
//! `emitter.to(room).emit("event", payload)`, so that the generator can
//! publish to Socket.IO servers running `@socket.io/redis-adapter` the way a
//! backend does: MessagePack of
//! `["emitter", {type: 2, data: ["event", payload], nsp: "/"}, {rooms: [room], flags: {}, except: []}]`
//! on the Redis channel `socket.io#/#<room>#` (the adapter skips rooms it
//! has no socket in without decoding).

/// Encodes the emitter's message for one room; `payload` is UTF-8.
pub fn encode(room: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + room.len() + payload.len());
    out.push(0x93); // array of 3: uid, packet, options
    str(&mut out, b"emitter");
    out.push(0x83); // the packet: a map of 3
    str(&mut out, b"type");
    out.push(0x02); // EVENT
    str(&mut out, b"data");
    out.push(0x92);
    str(&mut out, b"event");
    str(&mut out, payload);
    str(&mut out, b"nsp");
    str(&mut out, b"/");
    out.push(0x83); // the broadcast options: a map of 3
    str(&mut out, b"rooms");
    out.push(0x91);
    str(&mut out, room.as_bytes());
    str(&mut out, b"flags");
    out.push(0x80);
    str(&mut out, b"except");
    out.push(0x90);
    out
}

/// A MessagePack string, in the shortest form (as notepack.io writes it).
fn str(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n < 1 << 8 {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else if n < 1 << 16 {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn same_bytes_as_the_emitter() {
        // Captured from @socket.io/redis-emitter 5.1.0:
        // new Emitter(redis).to("bench.1.0").emit("event", "12 1700000000000000 xx")
        assert_eq!(
            hex(&encode("bench.1.0", b"12 1700000000000000 xx")),
            "93a7656d697474657283a47479706502a46461746192a56576656e74b6313220313730303030303030\
             30303030303030207878a36e7370a12f83a5726f6f6d7391a962656e63682e312e30a5666c6167738\
             0a665786365707490"
        );
    }

    #[test]
    fn long_strings() {
        let p = vec![b'x'; 300];
        let e = encode("r", &p);
        let at = e.windows(3).position(|w| w == [0xda, 0x01, 0x2c]).unwrap();
        assert_eq!(&e[at + 3..at + 303], &p[..]);
        let p = vec![b'x'; 40];
        assert!(encode("r", &p).windows(2).any(|w| w == [0xd9, 40]));
    }
}
