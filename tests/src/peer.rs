//! Roles a child process plays against the parent over a shared region (or a Unix socket,
//! as the baseline), used by the cross-process test, the ring benchmark and the demo.
//!
//! The parent is the guest (it produces requests); the child is a bare host side: it
//! consumes the request ring of slot 0 and answers on the response ring, without the
//! mediator's queueing. This is the raw floor of the transport.

use anyhow::{Context, Result, bail, ensure};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use vgpu_ring::{Access, Region, Request, Response, spin_hint};
use zerocopy::IntoBytes;

/// Size of one message on every transport of the benchmark (one ring entry).
pub const MESSAGE_SIZE: usize = 64;

/// The request with sequence number `seq`: every field derived from `seq`, so the
/// receiver can check content as well as order.
#[must_use]
pub fn message(seq: u64) -> Request {
    let s = seq as u32;
    Request {
        tag: s,
        opcode: (seq % 7) as u16 + 1,
        pool: b'A' + (seq % 26) as u8,
        priority: (seq % 3) as u8,
        vm_id: (seq >> 32) as u32,
        label: label_of(seq),
        in_offset: s.wrapping_mul(3),
        in_len: s ^ 0xdead_beef,
        out_offset: !s,
        out_len: s.rotate_left(7),
        args: [s.wrapping_add(1), s.wrapping_add(2), s.wrapping_add(3)],
        ready: 0,
    }
}

fn label_of(seq: u64) -> [u8; vgpu_ring::layout::LABEL_LEN] {
    let mut label = [0; vgpu_ring::layout::LABEL_LEN];
    for (i, chunk) in label.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&seq.rotate_left(i as u32 * 8).to_le_bytes());
    }
    label
}

/// Check that `got` is [`message`]`(seq)` (its publication word aside: the ring's).
///
/// # Errors
///
/// Describes the first mismatch.
pub fn check_message(seq: u64, got: &Request) -> Result<()> {
    let want = Request { ready: got.ready, ..message(seq) };
    ensure!(*got == want, "message {seq}: got {got:?}, want {want:?}");
    Ok(())
}

fn open_host(region: &Path) -> Result<vgpu_ring::HostEndpoints> {
    let region = Arc::new(Region::open(region, Access::ReadWrite)?);
    Ok(region.slot(0)?.host_endpoints()?)
}

/// Push one response, spinning while the ring is full.
fn push_response(host: &mut vgpu_ring::HostEndpoints, response: Response) -> Result<()> {
    let mut response = response;
    loop {
        match host.responses.push(response) {
            Ok(()) => return Ok(()),
            Err(vgpu_ring::PushError::Full(back)) => {
                response = back;
                spin_hint();
            }
            Err(vgpu_ring::PushError::Poisoned(e)) => bail!(e),
        }
    }
}

/// Consume `count` requests from slot 0, checking order and content, then answer once
/// with tag `count` to say it is done. Consumed slots are released in batches.
///
/// # Errors
///
/// On a wrong message or a poisoned ring.
pub fn consume(region: &Path, count: u64) -> Result<()> {
    let mut host = open_host(region)?;
    let mut seq = 0;
    while seq < count {
        let mut taken = 0;
        while let Some(req) = host.requests.take() {
            check_message(seq, &req)?;
            seq += 1;
            taken += 1;
            if taken == 64 || seq == count {
                break;
            }
        }
        if taken == 0 {
            spin_hint();
        } else {
            host.requests.release();
        }
    }
    push_response(&mut host, Response { tag: count as u32, status: 1, ..Response::default() })
}

/// Answer each of `count` requests from slot 0 with a response carrying its tag.
///
/// # Errors
///
/// On a poisoned ring.
pub fn echo(region: &Path, count: u64) -> Result<()> {
    let mut host = open_host(region)?;
    let mut answered = 0;
    while answered < count {
        match host.requests.pop() {
            Some(req) => {
                push_response(
                    &mut host,
                    Response { tag: req.tag, status: 1, ..Response::default() },
                )?;
                answered += 1;
            }
            None => spin_hint(),
        }
    }
    Ok(())
}

/// Answer `count` requests from slot 0 the way a host keeps up with a pipelining guest:
/// take every request published, stage an answer carrying its tag for each, then
/// publish the answers together and release the requests with one index store, as the
/// mediator does once per pass.
///
/// # Errors
///
/// On a poisoned ring.
pub fn echo_batched(region: &Path, count: u64) -> Result<()> {
    let mut host = open_host(region)?;
    let mut answered = 0;
    while answered < count {
        let mut taken = 0;
        while let Some(req) = host.requests.take() {
            match host.responses.stage(Response { tag: req.tag, status: 1, ..Response::default() })
            {
                Ok(()) => {}
                // No room: publish what is staged, then wait for room as `echo` does.
                Err(vgpu_ring::PushError::Full(back)) => {
                    host.responses.publish();
                    push_response(&mut host, back)?;
                }
                Err(vgpu_ring::PushError::Poisoned(e)) => bail!(e),
            }
            taken += 1;
        }
        if taken == 0 {
            spin_hint();
            continue;
        }
        host.responses.publish();
        host.requests.release();
        answered += taken;
    }
    Ok(())
}

/// Answer each of `count` VECTOR_ADD requests from slot 0 the plainest way the bytes
/// can move: read its two operands (`args[0]` floats each, the input being a ‖ b) out of
/// the arena into reused buffers, add them, write the sums to its output range, answer.
/// The host half of [`vector_add_round_trips`](crate::baseline::vector_add_round_trips).
///
/// # Errors
///
/// On a range outside the arena or a poisoned ring.
pub fn vector_add(region: &Path, count: u64) -> Result<()> {
    let slot = Arc::new(Region::open(region, Access::ReadWrite)?).slot(0)?;
    let mut host = slot.host_endpoints()?;
    let (mut a, mut b) = (Vec::<f32>::new(), Vec::<f32>::new());
    let mut answered = 0;
    while answered < count {
        let Some(req) = host.requests.pop() else {
            spin_hint();
            continue;
        };
        let n = req.args[0] as usize;
        a.resize(n, 0.0);
        b.resize(n, 0.0);
        slot.arena_read(u64::from(req.in_offset), a.as_mut_bytes())?;
        slot.arena_read(u64::from(req.in_offset) + 4 * n as u64, b.as_mut_bytes())?;
        a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
        slot.arena_write(u64::from(req.out_offset), a.as_bytes())?;
        let out_len = req.out_len;
        push_response(
            &mut host,
            Response { tag: req.tag, status: 1, out_len, ..Response::default() },
        )?;
        answered += 1;
    }
    Ok(())
}

/// Echo `count` messages of [`MESSAGE_SIZE`] bytes over a connected Unix stream socket.
///
/// # Errors
///
/// On a socket error or early close.
pub fn uds_echo(socket: &Path, count: u64) -> Result<()> {
    let mut stream =
        UnixStream::connect(socket).with_context(|| format!("connect {}", socket.display()))?;
    let mut buf = [0u8; MESSAGE_SIZE];
    for _ in 0..count {
        stream.read_exact(&mut buf)?;
        stream.write_all(&buf)?;
    }
    Ok(())
}
