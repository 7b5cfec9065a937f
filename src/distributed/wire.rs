//! The ranks' wire format: frames of a 16-byte header (magic, kind, body length; little
//! endian) and a body. A reduce body is the step, the mixture check, the two lengths, then the
//! f32 values and the f64 values.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use super::Payload;

const MAGIC: u32 = 0x4D58_5452; // "MXTR"
pub(crate) const HELLO: u32 = 1;
pub(crate) const WELCOME: u32 = 2;
pub(crate) const REDUCE: u32 = 3;
pub(crate) const RESULT: u32 = 4;
pub(crate) const ABORT: u32 = 5;

pub(crate) fn write_frame(stream: &mut TcpStream, kind: u32, body: &[u8]) -> std::io::Result<()> {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&kind.to_le_bytes());
    header[8..].copy_from_slice(&(body.len() as u64).to_le_bytes());
    stream.write_all(&header)?;
    stream.write_all(body)?;
    stream.flush()
}

/// Reads one frame, giving up at `deadline`.
pub(crate) fn read_frame(
    stream: &mut TcpStream,
    deadline: Instant,
) -> std::io::Result<(u32, Vec<u8>)> {
    let mut header = [0u8; 16];
    read_exact_until(stream, &mut header, deadline)?;
    let magic = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    if magic != MAGIC {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "not a mixtrain message",
        ));
    }
    let kind = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let len = u64::from_le_bytes(header[8..].try_into().expect("8 bytes")) as usize;
    let mut body = vec![0u8; len];
    read_exact_until(stream, &mut body, deadline)?;
    Ok((kind, body))
}

fn read_exact_until(
    stream: &mut TcpStream,
    mut buf: &mut [u8],
    deadline: Instant,
) -> std::io::Result<()> {
    while !buf.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(buf) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub(crate) fn encode_reduce(step: u64, check: u64, payload: &Payload) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + payload.f32s.len() * 4 + payload.f64s.len() * 8);
    out.extend_from_slice(&step.to_le_bytes());
    out.extend_from_slice(&check.to_le_bytes());
    out.extend_from_slice(&(payload.f32s.len() as u64).to_le_bytes());
    out.extend_from_slice(&(payload.f64s.len() as u64).to_le_bytes());
    for v in &payload.f32s {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in &payload.f64s {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub(crate) fn decode_reduce(body: &[u8]) -> Option<(u64, u64, Payload)> {
    let word = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            body.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    let (step, check) = (word(0)?, word(1)?);
    let (n32, n64) = (word(2)? as usize, word(3)? as usize);
    let rest = &body[32..];
    if rest.len() != n32.checked_mul(4)?.checked_add(n64.checked_mul(8)?)? {
        return None;
    }
    let (a, b) = rest.split_at(n32 * 4);
    let f32s = a
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let f64s = b
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Some((step, check, Payload { f32s, f64s }))
}

pub(crate) fn decode_hello(body: &[u8]) -> Option<(u64, u64, String)> {
    let rank = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let world = u64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
    let hash = String::from_utf8(body.get(16..)?.to_vec()).ok()?;
    Some((rank, world, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_bodies_round_trip_and_bad_lengths_are_refused() {
        let payload = Payload {
            f32s: vec![1.5, -0.0, f32::MAX],
            f64s: vec![std::f64::consts::PI],
        };
        let body = encode_reduce(7, 0xdead_beef, &payload);
        assert_eq!(decode_reduce(&body), Some((7, 0xdead_beef, payload)));
        assert_eq!(decode_reduce(&body[..body.len() - 1]), None);
        assert_eq!(decode_reduce(&body[..20]), None);
    }
}
