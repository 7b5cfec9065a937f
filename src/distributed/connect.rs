//! Joining the ranks of a run: rank 0 accepts every other rank's connection and checks its
//! hello (rank, world size, config hash); the others connect to rank 0. Failures name the
//! rank and what went wrong.

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::collective::distributed;
use super::wire::{decode_hello, read_frame, write_frame, ABORT, HELLO, WELCOME};
use super::DistributedConfig;
use crate::error::Result;

/// Rank 0's side of `join`.
pub(super) fn accept_ranks(
    config: &DistributedConfig,
    config_hash: &str,
    deadline: Instant,
) -> Result<Vec<TcpStream>> {
    let listener = TcpListener::bind(&config.address).map_err(|e| {
        distributed(format!(
            "rank 0 cannot listen on distributed.address = {:?}: {e} (another run on that port? \
             choose another with --port or distributed.address)",
            config.address
        ))
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| distributed(format!("listener: {e}")))?;
    let mut links: Vec<Option<TcpStream>> = (1..config.world_size).map(|_| None).collect();
    while links.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream
                    .set_nonblocking(false)
                    .and_then(|()| stream.set_nodelay(true))
                    .map_err(|e| distributed(format!("accepting a rank: {e}")))?;
                let (kind, body) = read_frame(&mut stream, deadline)
                    .map_err(|e| distributed(format!("a rank connected but said nothing: {e}")))?;
                let hello = (kind == HELLO).then(|| decode_hello(&body)).flatten();
                let verdict = match hello {
                    None => Err("a connection that is not a mixtrain rank".to_string()),
                    Some((rank, world, hash)) => {
                        check_hello(rank, world, &hash, config, config_hash, &links)
                    }
                };
                match verdict {
                    Ok(rank) => {
                        write_frame(&mut stream, WELCOME, &[]).map_err(|e| {
                            distributed(format!("rank {rank} left while joining: {e}"))
                        })?;
                        links[rank - 1] = Some(stream);
                    }
                    Err(message) => {
                        let _ = write_frame(&mut stream, ABORT, message.as_bytes());
                        for link in links.iter_mut().flatten() {
                            let _ = write_frame(link, ABORT, message.as_bytes());
                        }
                        return Err(distributed(message));
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = links
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| l.is_none())
                        .map(|(i, _)| (i + 1).to_string())
                        .collect();
                    return Err(distributed(format!(
                        "rank(s) {} did not join rank 0 at {} within distributed.join_timeout_s \
                         = {}",
                        missing.join(", "),
                        config.address,
                        config.join_timeout_s
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(distributed(format!("accepting a rank: {e}"))),
        }
    }
    Ok(links.into_iter().flatten().collect())
}

/// Whether a rank's greeting fits this run; Ok(its rank).
fn check_hello(
    rank: u64,
    world: u64,
    hash: &str,
    config: &DistributedConfig,
    config_hash: &str,
    links: &[Option<TcpStream>],
) -> std::result::Result<usize, String> {
    let rank = rank as usize;
    if world as usize != config.world_size {
        return Err(format!(
            "rank {rank} has distributed.world_size = {world}, rank 0 has {}",
            config.world_size
        ));
    }
    if rank == 0 || rank >= config.world_size {
        return Err(format!(
            "a rank joined as rank {rank}; expected 1..{}",
            config.world_size
        ));
    }
    if links[rank - 1].is_some() {
        return Err(format!("two processes joined as rank {rank}"));
    }
    if hash != config_hash {
        return Err(format!(
            "rank {rank}'s config differs from rank 0's (hash {hash} vs {config_hash}): every \
             rank must run the same config"
        ));
    }
    Ok(rank)
}

/// A follower's side of `join`.
pub(super) fn connect_to_rank0(
    config: &DistributedConfig,
    config_hash: &str,
    deadline: Instant,
) -> Result<TcpStream> {
    let address = config
        .address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| distributed(format!("cannot resolve {:?}", config.address)))?;
    let mut stream = loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() >= deadline => {
                return Err(distributed(format!(
                    "rank {} could not reach rank 0 at {} within distributed.join_timeout_s = \
                     {}: {e}",
                    config.rank, config.address, config.join_timeout_s
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream
        .set_nodelay(true)
        .map_err(|e| distributed(format!("rank {}: {e}", config.rank)))?;
    let mut hello = Vec::new();
    hello.extend_from_slice(&(config.rank as u64).to_le_bytes());
    hello.extend_from_slice(&(config.world_size as u64).to_le_bytes());
    hello.extend_from_slice(config_hash.as_bytes());
    write_frame(&mut stream, HELLO, &hello)
        .map_err(|e| distributed(link_failure(0, e, config.join_timeout())))?;
    let (kind, body) = read_frame(&mut stream, deadline)
        .map_err(|e| distributed(link_failure(0, e, config.join_timeout())))?;
    match kind {
        WELCOME => Ok(stream),
        ABORT => Err(distributed(String::from_utf8_lossy(&body).into_owned())),
        other => Err(distributed(format!(
            "rank 0 answered with message kind {other}"
        ))),
    }
}

/// What went wrong on the link to `rank`, in words.
pub(super) fn link_failure(rank: usize, error: std::io::Error, timeout: Duration) -> String {
    match error.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
            "rank {rank} did not answer within distributed.timeout_s = {} s (hung, or much \
             slower than the others)",
            timeout.as_secs_f64()
        ),
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe => {
            format!("rank {rank} disconnected (its process exited or was killed)")
        }
        _ => format!("the link to rank {rank} failed: {error}"),
    }
}
