//! Hot restart: a new `weft proxy` process takes the listening sockets of a running one, starts
//! serving on them, then tells the old one to drain. The kernel's accept queue of each socket is
//! never closed during the hand-over: both processes hold the same sockets, so a connection waiting
//! in the queue is accepted by one of them, never reset.
//!
//! The two processes talk over a Unix socket whose path derives from a base id
//! ([`socket_path`]). Frames are a 4-byte big-endian length and a JSON object; file descriptors
//! travel as `SCM_RIGHTS` on frames of type `fds`. The conversation, version 1:
//!
//! 1. new → old `hello {protocol, version, pid, admin}`; an old process that speaks another
//!    protocol answers `refused {message}` and keeps serving.
//! 2. old → new `listeners {protocol, version, pid, listeners: [{name, address, sockets}],
//!    counters}`, then `fds` frames carrying every socket in that order (at most
//!    [`FDS_PER_FRAME`] per frame).
//! 3. The new process starts with those sockets (binding nothing twice) and only then sends
//!    `drain`; old → new `draining {pid}`. The old process stops accepting, drains its
//!    connections and, just before it exits, sends `totals {counters}` (its final totals).
//!
//! If the new process fails or dies before step 3, the old one never hears `drain` and keeps
//! serving as if nothing happened.
//!
//! Additions within version 1, each optional, so builds before and after them hand over to each
//! other: `hello.admin` (the new process takes the admin socket too, as listener
//! [`ADMIN_LISTENER`]; only sent to a peer that says so), `listeners.counters` and the final
//! `totals` frame (counter totals, see [`crate::carry`]; a peer without them starts from zero),
//! `hello.build` and `listeners.build` (each side's [`build_id`], logged by the other; absent from
//! a build before them).
//!
//! Written by hand over `nix`'s `sendmsg`/`recvmsg`: no maintained crate implements a listener
//! hand-over protocol, and this one is small.

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The hand-over protocol's version. A peer with another version is refused; both keep running.
pub const PROTOCOL: u64 = 1;
/// File descriptors per `fds` frame (the kernel's limit is 253).
pub const FDS_PER_FRAME: usize = 200;
/// Frames are small JSON objects; anything larger is a protocol error. (Builds before counters
/// were carried read at most 1 MiB, so `listeners.counters` is left out above [`MAX_COUNTERS_IN_LISTENERS`].)
const MAX_FRAME: usize = 1 << 20;
/// The final `totals` frame may carry many series.
const MAX_TOTALS_FRAME: usize = 64 << 20;
/// Above this size the counters snapshot stays out of the `listeners` frame (the final totals
/// still carry them).
const MAX_COUNTERS_IN_LISTENERS: usize = 768 << 10;
/// The name under which the admin socket travels in a `listeners` frame.
pub const ADMIN_LISTENER: &str = "#admin";
/// A peer that stops talking mid-hand-over is given up on after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// This build's identity, sent to the peer of a hand-over and logged by it: the weft version and
/// the executable's GNU build id (the linker's hash of the binary, different for every build that
/// differs in any byte of code), e.g. `0.1.0+3f9c0e1a2b4d`; `0.1.0+unknown` when the executable has
/// no build id note.
pub fn build_id() -> &'static str {
    static BUILD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILD.get_or_init(|| {
        // /proc/self/exe opens the running executable even after an upgrade replaced the file.
        let id = executable_build_id(Path::new("/proc/self/exe"))
            .map(|h| h[..h.len().min(12)].to_string())
            .unwrap_or_else(|| "unknown".into());
        format!("{}+{id}", env!("CARGO_PKG_VERSION"))
    })
}

/// The GNU build id (hex) of the 64-bit little-endian ELF executable at `path`: the
/// `NT_GNU_BUILD_ID` note of a `PT_NOTE` segment. None for anything else.
pub fn executable_build_id(path: &Path) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).ok()?;
    let mut h = [0u8; 64];
    f.read_exact_at(&mut h, 0).ok()?;
    // ELF magic, 64-bit (class 2), little-endian (data 1).
    if h[..4] != *b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return None;
    }
    let u16at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4])) as u64;
    let u64at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let (phoff, phentsize, phnum) = (u64at(&h, 0x20), u16at(&h, 0x36), u16at(&h, 0x38));
    if phentsize < 56 || phnum > 256 {
        return None;
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    f.read_exact_at(&mut ph, phoff).ok()?;
    for i in 0..phnum as usize {
        let p = &ph[i * phentsize as usize..];
        // PT_NOTE
        if u32at(p, 0) != 4 {
            continue;
        }
        let (offset, size) = (u64at(p, 0x08), u64at(p, 0x20));
        if size > 1 << 16 {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        f.read_exact_at(&mut notes, offset).ok()?;
        let mut at = 0usize;
        let pad = |n: u64| (n as usize + 3) & !3;
        while at + 12 <= notes.len() {
            let (namesz, descsz, kind) = (u32at(&notes, at), u32at(&notes, at + 4), u32at(&notes, at + 8));
            let name_at = at + 12;
            let desc_at = name_at + pad(namesz);
            let end = desc_at + pad(descsz);
            if end > notes.len() {
                break;
            }
            // NT_GNU_BUILD_ID, owner "GNU\0"
            if kind == 3 && notes[name_at..name_at + namesz as usize] == *b"GNU\0" {
                let desc = &notes[desc_at..desc_at + descsz as usize];
                return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
            }
            at = end;
        }
    }
    None
}

/// The hand-over socket of the proxy with `base_id`: in `$WEFT_RUNTIME_DIR`, else
/// `$XDG_RUNTIME_DIR`, else `/tmp`.
pub fn socket_path(base_id: u32) -> PathBuf {
    let dir = std::env::var_os("WEFT_RUNTIME_DIR")
        .or_else(|| std::env::var_os("XDG_RUNTIME_DIR"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    dir.join(format!("weft-hot-restart-{base_id}.sock"))
}

/// Why a hand-over could not happen. In every case the old process keeps serving.
#[derive(Debug)]
pub enum HotRestartError {
    /// No process serves hand-overs at this path.
    Missing(PathBuf),
    /// The socket belongs to another user: refusing to trust or take its sockets.
    NotOwner {
        path: PathBuf,
        uid: u32,
    },
    /// Another live process already serves hand-overs at this path.
    InUse(PathBuf),
    /// The old process speaks another protocol version.
    Protocol {
        ours: u64,
        theirs: u64,
        version: String,
    },
    /// The old process refused the hand-over.
    Refused(String),
    /// The peer broke the protocol (bad frame, missing file descriptors).
    Malformed(String),
    Io(PathBuf, io::Error),
}

impl std::fmt::Display for HotRestartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HotRestartError::Missing(p) => write!(
                f,
                "no running weft proxy to take over: {} does not exist (start the old proxy with the same --base-id, or start without --hot-restart)",
                p.display()
            ),
            HotRestartError::NotOwner { path, uid } => write!(
                f,
                "{} belongs to uid {uid}, not to this user: refusing the hand-over",
                path.display()
            ),
            HotRestartError::InUse(p) => write!(
                f,
                "another weft proxy already serves hot restart at {} (use --hot-restart to take it over, or another --base-id)",
                p.display()
            ),
            HotRestartError::Protocol { ours, theirs, version } => write!(
                f,
                "the running proxy (weft {version}) speaks hot-restart protocol {theirs}, this one {ours}: refusing the hand-over; the old proxy keeps serving"
            ),
            HotRestartError::Refused(m) => write!(f, "the running proxy refused the hand-over: {m}"),
            HotRestartError::Malformed(m) => write!(f, "hot-restart protocol error: {m}"),
            HotRestartError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for HotRestartError {}

/// Listening sockets received from the old process, by listener name.
#[derive(Default)]
pub struct Inherited {
    listeners: HashMap<String, (SocketAddr, Vec<TcpListener>)>,
}

impl Inherited {
    /// The sockets of listener `name` if it listened on `address` (or on the address a port-0
    /// listener was bound to).
    pub(crate) fn take(&mut self, name: &str, address: SocketAddr) -> Option<(SocketAddr, Vec<TcpListener>)> {
        let (bound, _) = self.listeners.get(name)?;
        let same = *bound == address || (address.port() == 0 && bound.ip() == address.ip());
        if !same {
            return None;
        }
        self.listeners.remove(name)
    }

    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.listeners.keys().cloned().collect();
        v.sort();
        v
    }
}

fn write_frame(s: &mut UnixStream, v: &Value) -> io::Result<()> {
    let body = serde_json::to_vec(v)?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    s.write_all(&buf)
}

fn read_frame(s: &mut UnixStream) -> Result<Value, HotRestartError> {
    read_frame_max(s, MAX_FRAME)
}

fn read_frame_max(s: &mut UnixStream, max: usize) -> Result<Value, HotRestartError> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| io_err(Path::new("peer"), e))?;
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Err(HotRestartError::Malformed(format!("frame of {n} bytes")));
    }
    let mut body = vec![0u8; n];
    s.read_exact(&mut body).map_err(|e| io_err(Path::new("peer"), e))?;
    serde_json::from_slice(&body).map_err(|e| HotRestartError::Malformed(format!("bad frame: {e}")))
}

fn io_err(path: &Path, e: io::Error) -> HotRestartError {
    HotRestartError::Io(path.to_path_buf(), e)
}

/// Sends `fds` as one frame `{"type":"fds","count":n}` with the descriptors attached to its first
/// byte (so they arrive with that frame, not with a later read).
fn send_fds(s: &mut UnixStream, fds: &[RawFd]) -> io::Result<()> {
    let body = serde_json::to_vec(&json!({"type": "fds", "count": fds.len()}))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    let cmsg = [ControlMessage::ScmRights(fds)];
    let sent = sendmsg::<()>(
        s.as_raw_fd(),
        &[IoSlice::new(&buf[..1])],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .map_err(io::Error::from)?;
    if sent != 1 {
        return Err(io::Error::other("short sendmsg"));
    }
    s.write_all(&buf[1..])
}

/// Receives one `fds` frame and its descriptors.
fn recv_fds(s: &mut UnixStream) -> Result<Vec<OwnedFd>, HotRestartError> {
    let mut first = [0u8; 1];
    let mut space = nix::cmsg_space!([RawFd; FDS_PER_FRAME]);
    let mut fds = Vec::new();
    {
        let mut iov = [IoSliceMut::new(&mut first)];
        let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| io_err(Path::new("peer"), e.into()))?;
        if msg.bytes != 1 {
            return Err(HotRestartError::Malformed(
                "connection closed before the sockets".into(),
            ));
        }
        for c in msg.cmsgs().map_err(|e| io_err(Path::new("peer"), e.into()))? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors in this process for us;
                // nothing else owns them.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
    let mut rest_len = [0u8; 3];
    s.read_exact(&mut rest_len).map_err(|e| io_err(Path::new("peer"), e))?;
    let n = u32::from_be_bytes([first[0], rest_len[0], rest_len[1], rest_len[2]]) as usize;
    if n > MAX_FRAME {
        return Err(HotRestartError::Malformed(format!("frame of {n} bytes")));
    }
    let mut body = vec![0u8; n];
    s.read_exact(&mut body).map_err(|e| io_err(Path::new("peer"), e))?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| HotRestartError::Malformed(format!("bad frame: {e}")))?;
    let count = v["count"].as_u64().unwrap_or(u64::MAX) as usize;
    if v["type"] != "fds" || count != fds.len() {
        return Err(HotRestartError::Malformed(format!(
            "expected {count} file descriptors, received {}",
            fds.len()
        )));
    }
    Ok(fds)
}

/// Sockets one hand-over may carry in all (listeners × workers); more is a protocol error.
pub const MAX_SOCKETS: usize = 4096;

/// One listener in a `listeners` frame.
#[derive(Debug, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    pub sockets: usize,
}

/// Reads the `listeners` array of a `listeners` frame: every entry needs a unique non-empty name,
/// an address and a socket count, and the counts add up to at most [`MAX_SOCKETS`].
pub fn parse_listeners(frame: &Value) -> Result<Vec<ListenerSpec>, HotRestartError> {
    let bad = |m: String| HotRestartError::Malformed(m);
    let list = frame["listeners"]
        .as_array()
        .ok_or_else(|| bad("listeners is not a list".into()))?;
    let mut out: Vec<ListenerSpec> = Vec::with_capacity(list.len().min(MAX_SOCKETS));
    let mut total = 0usize;
    for (i, l) in list.iter().enumerate() {
        let name = l["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad(format!("listeners[{i}].name missing")))?;
        let address = l["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| bad(format!("listeners[{i}].address is not an address")))?;
        let sockets = l["sockets"]
            .as_u64()
            .filter(|n| *n as usize <= MAX_SOCKETS)
            .ok_or_else(|| bad(format!("listeners[{i}].sockets is not a count")))? as usize;
        total += sockets;
        if total > MAX_SOCKETS {
            return Err(bad(format!("more than {MAX_SOCKETS} sockets")));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(bad(format!("listeners[{i}].name {name:?} repeated")));
        }
        out.push(ListenerSpec {
            name: name.to_string(),
            address,
            sockets,
        });
    }
    Ok(out)
}

/// The new process's side, between receiving the sockets and telling the old process to drain.
pub struct Takeover {
    stream: UnixStream,
    path: PathBuf,
    /// The sockets, to pass to [`crate::Server::start_with`].
    pub inherited: Inherited,
    /// The old process's pid and weft version.
    pub peer_pid: u64,
    pub peer_version: String,
    /// The old process's [`build_id`] (None from a build before build ids were sent).
    pub peer_build: Option<String>,
    /// The old process's counter totals at the hand-over (empty from a build that sends none).
    pub counters: crate::carry::Totals,
}

/// Connects to the running proxy at `path` and receives its listening sockets. The old process
/// keeps serving until [`Takeover::finish`].
pub fn take_over(path: &Path) -> Result<Takeover, HotRestartError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(HotRestartError::Missing(path.into())),
        Err(e) => return Err(io_err(path, e)),
    };
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(HotRestartError::NotOwner {
            path: path.into(),
            uid: meta.uid(),
        });
    }
    let mut s = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(HotRestartError::Missing(path.into())),
        Err(e) => return Err(io_err(path, e)),
    };
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    write_frame(
        &mut s,
        &json!({"type": "hello", "protocol": PROTOCOL, "version": env!("CARGO_PKG_VERSION"), "build": build_id(), "pid": std::process::id(), "admin": true}),
    )
    .map_err(|e| io_err(path, e))?;
    let answer = read_frame(&mut s)?;
    match answer["type"].as_str() {
        Some("listeners") => {}
        Some("refused") => {
            return Err(HotRestartError::Refused(
                answer["message"].as_str().unwrap_or("no reason given").to_string(),
            ))
        }
        _ => return Err(HotRestartError::Malformed(format!("unexpected answer {answer}"))),
    }
    let theirs = answer["protocol"].as_u64().unwrap_or(0);
    let peer_version = answer["version"].as_str().unwrap_or("?").to_string();
    if theirs != PROTOCOL {
        return Err(HotRestartError::Protocol {
            ours: PROTOCOL,
            theirs,
            version: peer_version,
        });
    }
    let specs = parse_listeners(&answer)?;
    let total: usize = specs.iter().map(|l| l.sockets).sum();
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(total);
    while fds.len() < total {
        fds.extend(recv_fds(&mut s)?);
    }
    let mut fds = fds.into_iter();
    let mut inherited = Inherited::default();
    for l in specs {
        let socks: Vec<TcpListener> = fds.by_ref().take(l.sockets).map(TcpListener::from).collect();
        for s in &socks {
            s.set_nonblocking(true).map_err(|e| io_err(path, e))?;
        }
        inherited.listeners.insert(l.name, (l.address, socks));
    }
    let counters = crate::carry::Totals::from_json(&answer["counters"]).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "hot restart: the old process's counters are unreadable; counters start from zero");
        Default::default()
    });
    Ok(Takeover {
        stream: s,
        path: path.into(),
        inherited,
        peer_pid: answer["pid"].as_u64().unwrap_or(0),
        peer_version,
        peer_build: answer["build"].as_str().map(str::to_string),
        counters,
    })
}

impl Takeover {
    /// Tells the old process to drain (call once this process serves). Returns the old pid.
    /// The old process's final counter totals, sent when it exits, replace the snapshot of the
    /// hand-over (read on a thread of their own; a peer that sends none leaves the snapshot).
    pub fn finish(mut self) -> Result<u64, HotRestartError> {
        write_frame(&mut self.stream, &json!({"type": "drain"})).map_err(|e| io_err(&self.path, e))?;
        let answer = read_frame(&mut self.stream)?;
        if answer["type"] != "draining" {
            return Err(HotRestartError::Malformed(format!("unexpected answer {answer}")));
        }
        let mut stream = self.stream;
        let peer = self.peer_pid;
        let _ = std::thread::Builder::new()
            .name("weft-hot-restart-totals".into())
            .spawn(move || {
                let _ = stream.set_read_timeout(None);
                match read_frame_max(&mut stream, MAX_TOTALS_FRAME) {
                    Ok(v) if v["type"] == "totals" => match crate::carry::Totals::from_json(&v["counters"]) {
                        Ok(t) => {
                            tracing::info!(old_pid = peer, series = t.series(), "hot restart: the old process's final counter totals carried over");
                            crate::carry::set(t);
                        }
                        Err(e) => tracing::warn!(error = %e, "hot restart: the old process's final totals are unreadable; keeping its hand-over snapshot"),
                    },
                    // A build that sends no final totals closes the connection when it exits.
                    _ => {}
                }
            });
        Ok(self.peer_pid)
    }
}

/// Binds the hand-over socket at `path` (mode 0600: only this user may take the sockets). Refuses a
/// path where another live proxy serves unless `replace` (the process that just took that proxy
/// over); a stale socket file is replaced.
pub fn bind(path: &Path, replace: bool) -> Result<UnixListener, HotRestartError> {
    if std::fs::symlink_metadata(path).is_ok() {
        let live = UnixStream::connect(path).is_ok();
        if live && !replace {
            return Err(HotRestartError::InUse(path.into()));
        }
        std::fs::remove_file(path).map_err(|e| io_err(path, e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io_err(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| io_err(path, e))?;
    Ok(listener)
}

/// The old process's side: serves hand-overs on `listener` on a thread of its own. `on_drain` runs
/// when a new process has taken the sockets and asks this one to drain (the binary starts its
/// shutdown there).
pub fn serve(
    listener: UnixListener,
    server: Weak<crate::Server>,
    on_drain: Arc<dyn Fn() + Send + Sync>,
) -> Result<(), HotRestartError> {
    std::thread::Builder::new()
        .name("weft-hot-restart".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let Some(server) = server.upgrade() else { return };
                match hand_over(&server, &mut conn) {
                    Ok(Some(new_build)) => {
                        tracing::info!(build = %build_id(), %new_build, "hot restart: the new process took the listeners; draining");
                        on_drain();
                        return;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "hot restart: hand-over abandoned; still serving"),
                }
            }
        })
        .map_err(|e| io_err(Path::new("thread"), e))?;
    Ok(())
}

/// One hand-over conversation; `Ok(Some(the peer's build))` when the peer asked this process to
/// drain.
fn hand_over(server: &crate::Server, s: &mut UnixStream) -> Result<Option<String>, HotRestartError> {
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let hello = read_frame(s)?;
    let theirs = hello["protocol"].as_u64().unwrap_or(0);
    let takes_admin = hello["admin"] == true;
    let peer = hello["pid"].as_u64().unwrap_or(0);
    let peer_build = hello["build"]
        .as_str()
        .unwrap_or("(not sent: a build before build ids)")
        .to_string();
    if hello["type"] != "hello" || theirs != PROTOCOL {
        let message = format!(
            "this proxy (weft {}) speaks hot-restart protocol {PROTOCOL}, the new process (weft {}) {theirs}",
            env!("CARGO_PKG_VERSION"),
            hello["version"].as_str().unwrap_or("?")
        );
        tracing::warn!(peer, %message, "hot restart refused; still serving");
        write_frame(s, &json!({"type": "refused", "message": message})).map_err(|e| io_err(Path::new("peer"), e))?;
        return Ok(None);
    }
    let mut listeners = server.handover_sockets();
    if !takes_admin {
        // A build that does not know the admin socket would hold it without ever accepting.
        listeners.retain(|(name, _, _)| name != ADMIN_LISTENER);
    }
    let totals = crate::carry::Totals::from_exposition(&crate::admin::prometheus_text(&server.shared)).to_json();
    let counters = match serde_json::to_vec(&totals) {
        Ok(b) if b.len() <= MAX_COUNTERS_IN_LISTENERS => totals,
        _ => Value::Null,
    };
    let specs: Vec<Value> = listeners
        .iter()
        .map(|(name, addr, socks)| json!({"name": name, "address": addr.to_string(), "sockets": socks.len()}))
        .collect();
    write_frame(
        s,
        &json!({"type": "listeners", "protocol": PROTOCOL, "version": env!("CARGO_PKG_VERSION"),
                "build": build_id(), "pid": std::process::id(), "listeners": specs, "counters": counters}),
    )
    .map_err(|e| io_err(Path::new("peer"), e))?;
    // `listeners` owns duplicates of the sockets until they are sent.
    let all: Vec<RawFd> = listeners
        .iter()
        .flat_map(|(_, _, socks)| socks.iter().map(|l| l.as_raw_fd()))
        .collect();
    for chunk in all.chunks(FDS_PER_FRAME) {
        send_fds(s, chunk).map_err(|e| io_err(Path::new("peer"), e))?;
    }
    tracing::info!(
        peer,
        sockets = all.len(),
        build = %build_id(),
        peer_build = %peer_build,
        "hot restart: listening sockets sent; waiting for the new process"
    );
    // The new process starts now; it asks us to drain only once it serves. A timeout or a closed
    // connection means it failed: keep serving.
    let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
    let drain = read_frame(s)?;
    if drain["type"] != "drain" {
        return Err(HotRestartError::Malformed(format!("unexpected frame {drain}")));
    }
    if takes_admin {
        server.stop_admin();
    }
    server.start_drain();
    write_frame(s, &json!({"type": "draining", "pid": std::process::id()}))
        .map_err(|e| io_err(Path::new("peer"), e))?;
    if let Ok(keep) = s.try_clone() {
        *SUCCESSOR.lock() = Some(keep);
    }
    Ok(Some(peer_build))
}

/// The connection to the process that took this one over, for [`send_final_totals`].
static SUCCESSOR: parking_lot::Mutex<Option<UnixStream>> = parking_lot::Mutex::new(None);

/// After a hand-over, sends this process's final counter totals to the process that took it over
/// (call when the drain is over, just before exiting). Does nothing without a hand-over.
pub fn send_final_totals(server: &crate::Server) {
    let Some(mut s) = SUCCESSOR.lock().take() else { return };
    let totals = crate::carry::Totals::from_exposition(&crate::admin::prometheus_text(&server.shared));
    let series = totals.series();
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    match write_frame(&mut s, &json!({"type": "totals", "counters": totals.to_json()})) {
        Ok(()) => tracing::info!(series, "hot restart: final counter totals sent to the new process"),
        Err(e) => tracing::warn!(error = %e, "hot restart: could not send the final counter totals"),
    }
}

/// Logs the open downstream connections every 100 ms (at debug, target `weft::drain`) until the
/// process exits: the drain curve `bench/hot-restart` reads. Costs nothing unless that target is
/// enabled.
pub fn trace_drain(server: std::sync::Arc<crate::Server>) {
    if !tracing::enabled!(target: "weft::drain", tracing::Level::DEBUG) {
        return;
    }
    let server = std::sync::Arc::downgrade(&server);
    let _ = std::thread::Builder::new()
        .name("weft-drain-trace".into())
        .spawn(move || loop {
            let Some(s) = server.upgrade() else { return };
            tracing::debug!(target: "weft::drain", open = s.active_connections(), "draining");
            drop(s);
            std::thread::sleep(Duration::from_millis(100));
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_frames_are_checked() {
        let ok = json!({"listeners": [{"name": "web", "address": "127.0.0.1:80", "sockets": 2}]});
        assert_eq!(
            parse_listeners(&ok).unwrap(),
            vec![ListenerSpec {
                name: "web".into(),
                address: "127.0.0.1:80".parse().unwrap(),
                sockets: 2
            }]
        );
        for bad in [
            json!({}),
            json!({"listeners": [{"name": "", "address": "127.0.0.1:80", "sockets": 1}]}),
            json!({"listeners": [{"name": "a", "address": "nowhere", "sockets": 1}]}),
            json!({"listeners": [{"name": "a", "address": "127.0.0.1:80", "sockets": -1}]}),
            json!({"listeners": [{"name": "a", "address": "127.0.0.1:80", "sockets": 1u64 << 40}]}),
            json!({"listeners": [{"name": "a", "address": "127.0.0.1:80", "sockets": 4000},
                                 {"name": "b", "address": "127.0.0.1:81", "sockets": 4000}]}),
            json!({"listeners": [{"name": "a", "address": "127.0.0.1:80", "sockets": 1},
                                 {"name": "a", "address": "127.0.0.1:81", "sockets": 1}]}),
        ] {
            assert!(parse_listeners(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_build_id_is_the_executables_gnu_build_id() {
        // This test binary is linked like weft itself: its note is what `build_id` reports.
        let exe = std::env::current_exe().unwrap();
        let id = executable_build_id(&exe).expect("a GNU build id note");
        assert!(id.len() >= 16 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert_eq!(build_id(), format!("{}+{}", env!("CARGO_PKG_VERSION"), &id[..12]));
        // Not an ELF file, or no such file: none.
        let dir = std::env::temp_dir().join(format!("weft-build-id-{}", std::process::id()));
        std::fs::write(&dir, b"#!/bin/sh\n").unwrap();
        assert_eq!(executable_build_id(&dir), None);
        let _ = std::fs::remove_file(&dir);
        assert_eq!(executable_build_id(Path::new("/nonexistent/weft")), None);
    }

    #[test]
    fn sockets_travel_between_processes_as_file_descriptors() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        send_fds(&mut a, &[l1.as_raw_fd(), l2.as_raw_fd()]).unwrap();
        let got = recv_fds(&mut b).unwrap();
        assert_eq!(got.len(), 2);
        let got: Vec<TcpListener> = got.into_iter().map(TcpListener::from).collect();
        assert_eq!(got[0].local_addr().unwrap(), l1.local_addr().unwrap());
        assert_eq!(got[1].local_addr().unwrap(), l2.local_addr().unwrap());
        // The same socket: a connection to it can be accepted through the received descriptor.
        drop(l1);
        let _c = std::net::TcpStream::connect(got[0].local_addr().unwrap()).unwrap();
        assert!(got[0].accept().is_ok());
    }
}
