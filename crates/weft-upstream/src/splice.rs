//! splice(2): a response body moved from the upstream's socket to the client's through a pipe,
//! without being copied into user space and out again (Linux). The kernel hands the received
//! pages on to the other socket; for a 64 KiB body that saves two 64 KiB copies, which are most of
//! what forwarding it costs.
//!
//! Written here rather than taken from a crate: the splice crates (`tokio-splice`,
//! `tokio-splice2`) copy whole streams to their end in both directions; weft moves one bounded
//! body (its content-length) in the middle of an HTTP/1.1 exchange, polling each socket's
//! readiness from the exchange's own task, and both connections carry on with the next request.

use crate::kept::Kept;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{ready, Context, Poll};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// A body with less than this still to come is copied as before: for a small body the pipe's
/// extra system calls cost more than the copies they save.
pub const SPLICE_MIN: u64 = 16 * 1024;

/// The most one splice into the pipe asks for: the default pipe capacity (16 pages).
const CHUNK: usize = 64 * 1024;

/// Empty pipes kept per worker thread for the next body.
const POOL_MAX: usize = 16;

/// The most pipes this process holds (in use or kept), so that it stays well under the per-user
/// pipe budget (`/proc/sys/fs/pipe-user-pages-soft`: 16,384 pages, 1,024 full-size pipes), beyond
/// which new pipes get 2 pages instead of 16 and splicing would cost more than copying. A body
/// that finds none left is copied.
const MAX_PIPES: usize = 256;

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Set when splice(2) turned out not to work here (a sandbox that refuses it): bodies are copied.
static OFF: AtomicBool = AtomicBool::new(false);

/// Whether splice works here, as far as this process has seen.
pub fn enabled() -> bool {
    !OFF.load(Ordering::Relaxed)
}

thread_local! {
    static POOL: Kept<Fds> = const { Kept::new(Vec::new()) };
}

/// A pipe's two ends, counted in [`LIVE`] while open.
struct Fds {
    read: OwnedFd,
    write: OwnedFd,
}

impl Drop for Fds {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A non-blocking pipe and the bytes it holds. Dropped empty, it goes back to its thread's pool;
/// dropped holding bytes (an exchange cut short), it is closed.
pub struct Pipe {
    fds: Option<Fds>,
    held: usize,
}

impl Pipe {
    /// An empty pipe: one of this thread's, or a new one (`Err` when the process holds
    /// [`MAX_PIPES`] already, or the system refuses one).
    pub fn take() -> io::Result<Pipe> {
        if let Some(fds) = crate::kept::take(&POOL) {
            return Ok(Pipe {
                fds: Some(fds),
                held: 0,
            });
        }
        if LIVE.fetch_add(1, Ordering::Relaxed) >= MAX_PIPES {
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return Err(io::Error::other("the process holds as many pipes as it may"));
        }
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded: both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe {
            fds: Some(Fds { read, write }),
            held: 0,
        })
    }

    /// Bytes in the pipe, not yet moved out.
    pub fn held(&self) -> usize {
        self.held
    }

    fn read_end(&self) -> RawFd {
        self.fds.as_ref().map_or(-1, |f| f.read.as_raw_fd())
    }

    fn write_end(&self) -> RawFd {
        self.fds.as_ref().map_or(-1, |f| f.write.as_raw_fd())
    }

    /// Moves up to `max` bytes from `from` into the pipe, which must be empty (a pipe counts
    /// its room in pages, not bytes: only an empty one is sure to take what the socket has, so
    /// that "would block" means the socket has nothing). `Ok(0)`: the peer closed its side.
    /// `Unsupported`: nothing was moved and the body can go on by reads — the socket holds bytes
    /// splice does not take (urgent data stops it at the mark, where a plain read goes on), or
    /// splice does not work on this system (EINVAL, ENOSYS, EPERM, EOPNOTSUPP: then it is turned
    /// off for the process, see [`enabled`]).
    pub fn poll_fill(&mut self, from: &TcpStream, max: u64, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.held != 0 {
            return Poll::Ready(Err(io::Error::other("a pipe is filled only when empty")));
        }
        let len = usize::try_from(max).unwrap_or(CHUNK).min(CHUNK);
        loop {
            ready!(from.poll_read_ready(cx))?;
            let fd = from.as_raw_fd();
            match from.try_io(Interest::READABLE, || match splice(fd, self.write_end(), len) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && at_urgent_mark(fd) => Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the socket holds bytes splice does not take (urgent data)",
                )),
                r => r,
            }) {
                Ok(n) => {
                    self.held += n;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::ENOSYS | libc::EPERM | libc::EOPNOTSUPP)
                    ) =>
                {
                    if !OFF.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "splice(2) does not work here: response bodies are copied");
                    }
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::Unsupported, e)));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Moves what the pipe holds (some of it, as the socket takes it) to `to`.
    pub fn poll_drain(&mut self, to: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            ready!(to.poll_write_ready(cx))?;
            match to.try_io(Interest::WRITABLE, || {
                splice(self.read_end(), to.as_raw_fd(), self.held)
            }) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.held -= n;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        if let (0, Some(fds)) = (self.held, self.fds.take()) {
            // (A thread being torn down has no pool left: the pipe is closed.)
            crate::kept::give(&POOL, fds, POOL_MAX);
        }
    }
}

/// `SIOCATMARK` (asm-generic/sockios.h; the value on x86_64 and aarch64, what weft is built for):
/// whether the next byte to read is the urgent mark. libc does not export it for Linux.
const SIOCATMARK: libc::c_ulong = 0x8905;

/// Whether a socket's next byte is urgent data, where splice stops and a read goes on.
fn at_urgent_mark(fd: RawFd) -> bool {
    let mut at: libc::c_int = 0;
    // SAFETY: SIOCATMARK writes one int through the pointer, which points at `at`.
    unsafe { libc::ioctl(fd, SIOCATMARK as _, &mut at as *mut libc::c_int) == 0 && at != 0 }
}

/// One non-blocking splice. (Into a socket the peer has reset it raises SIGPIPE, as a plain
/// `write` would: Rust programs ignore SIGPIPE from their start, so it comes back as EPIPE.)
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors, no offsets (both ends are a socket or a pipe).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The tests take pipes from the process's budget, which `pipes_are_capped` empties: one at
    /// a time.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (c, l.accept().await.unwrap().0)
    }

    /// 1 MiB through a pipe from one connection to another, exactly the bytes asked for: what
    /// follows on the source stays there.
    #[tokio::test]
    async fn moves_exactly_the_bytes_asked_for() {
        let _serial = SERIAL.lock().await;
        let (mut up_peer, up) = pair().await;
        let (down, mut down_peer) = pair().await;
        let body: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let sent = body.clone();
        let writer = tokio::spawn(async move {
            up_peer.write_all(&sent).await.unwrap();
            up_peer.write_all(b"NEXT").await.unwrap();
            up_peer
        });
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 1 << 20];
            down_peer.read_exact(&mut got).await.unwrap();
            got
        });
        let mut pipe = Pipe::take().unwrap();
        let mut left = body.len() as u64;
        while left > 0 || pipe.held() > 0 {
            if pipe.held() > 0 {
                poll_fn(|cx| pipe.poll_drain(&down, cx)).await.unwrap();
            } else {
                let n = poll_fn(|cx| pipe.poll_fill(&up, left, cx)).await.unwrap();
                assert!(n > 0);
                left -= n as u64;
            }
        }
        assert_eq!(reader.await.unwrap(), body);
        let _peer = writer.await.unwrap();
        let mut rest = [0u8; 4];
        let mut up = up;
        up.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"NEXT");
    }

    /// A pipe dropped empty is used again; one dropped holding bytes is not.
    #[tokio::test]
    async fn only_empty_pipes_go_back_to_the_pool() {
        let _serial = SERIAL.lock().await;
        let p = Pipe::take().unwrap();
        let fd = p.read_end();
        drop(p);
        let p = Pipe::take().unwrap();
        assert_eq!(p.read_end(), fd, "an empty pipe is reused");

        let (mut peer, up) = pair().await;
        peer.write_all(b"abc").await.unwrap();
        let mut p = p;
        let n = poll_fn(|cx| p.poll_fill(&up, 3, cx)).await.unwrap();
        assert_eq!(n, 3);
        drop(p);
        let q = Pipe::take().unwrap();
        assert_eq!(q.held(), 0);
        let mut buf = [0u8; 8];
        // SAFETY: reading into a local buffer from an open descriptor.
        let r = unsafe { libc::read(q.read_end(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(r, -1, "a new pipe holds nothing");
    }

    /// The process holds at most MAX_PIPES pipes; one given back can be taken again.
    #[tokio::test]
    async fn pipes_are_capped() {
        let _serial = SERIAL.lock().await;
        let mut held = Vec::new();
        while let Ok(p) = Pipe::take() {
            held.push(p);
            assert!(held.len() <= MAX_PIPES, "more than {MAX_PIPES} pipes");
        }
        // (A test that ran before may not have closed its pooled pipe yet: its thread's pool
        // goes when the thread ends.)
        assert!(held.len() + 2 >= MAX_PIPES, "only {} pipes", held.len());
        held.pop();
        assert!(Pipe::take().is_ok(), "a pipe given back is there again");
    }
}
