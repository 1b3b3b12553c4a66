//! The raft thread's inbox: a bounded channel, and the inbound peer connections the raft
//! thread reads itself ([`crate::transport::inbound`]), waited on together with one `epoll`.
//!
//! A sender puts its message in the channel, then rings an `eventfd` bell if the raft thread
//! said it is going to sleep; the raft thread says so before it looks at the channel a last
//! time and sleeps. Both sides fence between their write and their read, so either the raft
//! thread sees the message or the sender sees it asleep.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender, TryRecvError};

use super::RaftMsg;
use crate::transport::inbound::RaftConn;

/// The epoll token of the bell; connections count up from 1.
const BELL: u64 = 0;
/// Most readiness events taken per wait.
const EVENTS_MAX: usize = 64;

/// Creates an inbox holding at most `cap` messages.
pub fn inbox(cap: usize) -> io::Result<(InboxTx, InboxRx)> {
    // SAFETY: plain syscalls; each result is checked before it is owned.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
    epoll_add(&epoll, efd.as_raw_fd(), BELL)?;
    let bell = Arc::new(Bell {
        efd,
        asleep: AtomicBool::new(false),
    });
    let (tx, rx) = channel::bounded(cap);
    Ok((
        InboxTx {
            tx,
            bell: bell.clone(),
        },
        InboxRx {
            rx,
            bell,
            epoll,
            conns: HashMap::new(),
            next_token: BELL + 1,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX],
        },
    ))
}

fn epoll_add(epoll: &OwnedFd, fd: RawFd, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
        u64: token,
    };
    // SAFETY: both descriptors are open; `ev` outlives the call.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

struct Bell {
    efd: OwnedFd,
    /// The raft thread is about to wait, or waits.
    asleep: AtomicBool,
}

impl Bell {
    fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst) {
            let one = 1u64;
            // SAFETY: writes 8 bytes from a live u64 to an open eventfd. A full counter
            // (EAGAIN) already wakes the waiter.
            unsafe {
                libc::write(
                    self.efd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        }
    }

    fn drain(&self) {
        let mut n = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from an open non-blocking eventfd.
        unsafe {
            libc::read(
                self.efd.as_raw_fd(),
                (&mut n as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

/// A message was not sent: the raft thread is gone, or the inbox stayed full.
#[derive(Debug)]
pub struct NotSent;

/// The sending side, cloned by every thread that talks to the raft thread.
#[derive(Clone)]
pub struct InboxTx {
    tx: Sender<RaftMsg>,
    bell: Arc<Bell>,
}

impl InboxTx {
    /// Sends, waiting while the inbox is full.
    pub fn send(&self, msg: RaftMsg) -> Result<(), NotSent> {
        self.tx.send(msg).map_err(|_| NotSent)?;
        self.bell.ring();
        Ok(())
    }

    /// Sends unless the inbox is full.
    pub fn try_send(&self, msg: RaftMsg) -> Result<(), NotSent> {
        self.tx.try_send(msg).map_err(|_| NotSent)?;
        self.bell.ring();
        Ok(())
    }

    /// Sends, waiting at most `timeout` while the inbox is full.
    pub fn send_timeout(&self, msg: RaftMsg, timeout: Duration) -> Result<(), NotSent> {
        self.tx.send_timeout(msg, timeout).map_err(|_| NotSent)?;
        self.bell.ring();
        Ok(())
    }

    /// Sends, waiting until `deadline` at most while the inbox is full.
    pub fn send_deadline(&self, msg: RaftMsg, deadline: Instant) -> Result<(), NotSent> {
        self.tx.send_deadline(msg, deadline).map_err(|_| NotSent)?;
        self.bell.ring();
        Ok(())
    }
}

/// The raft thread's side.
pub struct InboxRx {
    rx: Receiver<RaftMsg>,
    bell: Arc<Bell>,
    epoll: OwnedFd,
    conns: HashMap<u64, RaftConn>,
    next_token: u64,
    events: Vec<libc::epoll_event>,
}

impl InboxRx {
    /// The next message, if one is waiting.
    pub fn try_recv(&self) -> Result<RaftMsg, TryRecvError> {
        self.rx.try_recv()
    }

    /// Starts waiting on `conn` too.
    pub fn adopt(&mut self, conn: RaftConn) -> io::Result<()> {
        let token = self.next_token;
        self.next_token += 1;
        epoll_add(&self.epoll, conn.fd(), token)?;
        self.conns.insert(token, conn);
        Ok(())
    }

    /// Waits until the channel holds a message or a connection has something to read, at
    /// most `timeout` (not at all if the channel is not empty); puts the readable
    /// connections' tokens in `ready`.
    pub fn wait(&mut self, timeout: Duration, ready: &mut Vec<u64>) {
        ready.clear();
        let mut ms = if self.rx.is_empty() {
            // Round up: waking early would spin until the deadline.
            timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
        } else {
            0
        };
        if ms > 0 {
            self.bell.asleep.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if !self.rx.is_empty() {
                ms = 0;
            }
        }
        // SAFETY: `events` holds EVENTS_MAX entries and outlives the call.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                EVENTS_MAX as i32,
                ms,
            )
        };
        self.bell.asleep.store(false, Ordering::SeqCst);
        self.take_events(n, ready);
    }

    fn take_events(&mut self, n: i32, ready: &mut Vec<u64>) {
        for ev in self.events.iter().take(n.max(0) as usize) {
            let token = ev.u64;
            if token == BELL {
                self.bell.drain();
            } else {
                ready.push(token);
            }
        }
    }

    /// The connection with `token`, if still open.
    pub fn conn(&mut self, token: u64) -> Option<&mut RaftConn> {
        self.conns.get_mut(&token)
    }

    /// Closes the connection with `token`.
    pub fn close(&mut self, token: u64) {
        if let Some(conn) = self.conns.remove(&token) {
            // SAFETY: the descriptor is still open (the connection closes when dropped below).
            unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    conn.fd(),
                    std::ptr::null_mut(),
                )
            };
        }
    }

    /// Tokens of the connections silent for `idle` or longer at `now`.
    pub fn idle(&self, now: Instant, idle: Duration) -> Vec<u64> {
        self.conns
            .iter()
            .filter(|(_, c)| c.idle_for(now) >= idle)
            .map(|(t, _)| *t)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::sync::Mutex;

    use super::*;
    use crate::transport::TransportStats;

    /// A message sent while the raft thread sleeps wakes it at once, many times over (a lost
    /// wake-up would leave it asleep for the whole timeout).
    #[test]
    fn a_message_wakes_the_sleeper() {
        let (tx, mut rx) = inbox(16).unwrap();
        let mut ready = Vec::new();
        for _ in 0..200 {
            let sender = {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_micros(200));
                    tx.send(RaftMsg::ReadWanted).unwrap();
                })
            };
            let started = Instant::now();
            loop {
                rx.wait(Duration::from_secs(30), &mut ready);
                if rx.try_recv().is_ok() {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(5), "no wake-up");
            }
            assert!(started.elapsed() < Duration::from_secs(5));
            sender.join().unwrap();
        }
        // With something waiting, a wait does not sleep at all.
        tx.try_send(RaftMsg::ReadWanted).unwrap();
        let started = Instant::now();
        rx.wait(Duration::from_secs(30), &mut ready);
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    /// An adopted connection wakes the wait when its peer writes, and is gone once closed.
    #[test]
    fn an_adopted_connection_wakes_the_wait() {
        let (_tx, mut rx) = inbox(16).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, addr) = listener.accept().unwrap();
        let conns = Arc::new(Mutex::new(HashMap::new()));
        let stats = Arc::new(TransportStats::default());
        let conn = RaftConn::new(ours, 1, 2, 1 << 20, addr, stats, conns, 1).unwrap();
        rx.adopt(conn).unwrap();
        let mut ready = Vec::new();
        rx.wait(Duration::from_millis(20), &mut ready);
        assert!(ready.is_empty());
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            peer.write_all(&[0, 0, 0, 1]).unwrap();
            peer
        });
        let started = Instant::now();
        rx.wait(Duration::from_secs(30), &mut ready);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(ready.len(), 1);
        let token = ready[0];
        let mut out = Vec::new();
        let conn = rx.conn(token).expect("adopted");
        assert_eq!(
            conn.read(&mut out, 1 << 20).unwrap(),
            crate::transport::inbound::Reading::Drained
        );
        rx.close(token);
        assert!(rx.conn(token).is_none());
        drop(writer.join().unwrap());
    }
}
