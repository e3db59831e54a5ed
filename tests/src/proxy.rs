//! The harness's TCP proxy for one directed link between two members of a
//! partitionable cluster (`netns`): every connection one member opens to the
//! other is redirected here (DNAT in the dialling member's namespace), and the
//! proxy forwards the bytes, after a delay and at a bandwidth the test sets, or
//! drops every open connection of the link on request. It lives in the test
//! process: its threads listen and dial inside the cluster's hub namespace.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the test has set for the link, read by every copying thread for each
/// piece of data it forwards.
#[derive(Default)]
struct Settings {
    delay_us: AtomicU64,
    /// Bytes per second; 0 is unlimited.
    bandwidth: AtomicU64,
}

/// State shared by the listener and the copying threads.
struct Shared {
    stop: AtomicBool,
    settings: Settings,
    /// Both sockets of every open connection, by connection number, so that a
    /// reset or the proxy's end can shut them down from outside.
    connections: Mutex<BTreeMap<u64, (TcpStream, TcpStream)>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A copying thread that panicked left the map consistent (one insert or remove).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One running proxy: stopped, its connections closed and its threads joined
/// when dropped.
pub struct Proxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    listener: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy that listens on `listen_ip` (port chosen by the kernel) and
    /// forwards to `target`; `enter` is called first on the listening thread to
    /// move it into the namespace where both addresses are reachable.
    pub fn start(
        listen_ip: std::net::IpAddr,
        target: SocketAddr,
        enter: impl FnOnce() -> std::io::Result<()> + Send + 'static,
    ) -> std::io::Result<Proxy> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            settings: Settings::default(),
            connections: Mutex::new(BTreeMap::new()),
            threads: Mutex::new(Vec::new()),
        });
        let (bound, bound_rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let listener = std::thread::Builder::new()
            .name(format!("proxy-{target}"))
            .spawn(move || {
                let listener = enter()
                    .and_then(|()| TcpListener::bind((listen_ip, 0)))
                    .and_then(|listener| {
                        listener.set_nonblocking(true)?;
                        Ok(listener)
                    });
                match listener {
                    Ok(listener) => {
                        let _ = bound.send(listener.local_addr());
                        accept_loop(&listener, target, &thread_shared);
                    }
                    Err(error) => {
                        let _ = bound.send(Err(error));
                    }
                }
            })?;
        let address = bound_rx
            .recv()
            .map_err(|_| std::io::Error::other("the proxy's thread ended before it listened"))??;
        Ok(Proxy {
            address,
            shared,
            listener: Some(listener),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Holds every piece of data for `delay` before forwarding it.
    pub fn set_delay(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared
            .settings
            .delay_us
            .store(micros, Ordering::SeqCst);
    }

    /// Forwards at most `bytes_per_second` in each direction of each connection
    /// (None: unlimited).
    pub fn set_bandwidth(&self, bytes_per_second: Option<u64>) {
        let value = bytes_per_second.unwrap_or(0);
        self.shared
            .settings
            .bandwidth
            .store(value, Ordering::SeqCst);
    }

    /// Closes every open connection of the link (both ends see a reset or an
    /// end of stream); new connections are accepted as before.
    pub fn reset_connections(&self) {
        let connections = std::mem::take(&mut *lock(&self.shared.connections));
        for (inbound, outbound) in connections.values() {
            let _ = inbound.shutdown(Shutdown::Both);
            let _ = outbound.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(listener) = self.listener.take() {
            let _ = listener.join();
        }
        self.reset_connections();
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// Accepts connections until the proxy stops, polling so that the stop flag is
/// seen within a few milliseconds.
fn accept_loop(listener: &TcpListener, target: SocketAddr, shared: &Arc<Shared>) {
    let mut next_id = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((inbound, _)) => {
                next_id += 1;
                // The connection to the target is made on this thread, which is
                // in the namespace where the target is reachable.
                // A target that is down (killed by the test) refuses: the
                // dialler sees its connection closed, as good as refused.
                match connect_pair(inbound, target, next_id, shared) {
                    Err(error) if error.kind() != ErrorKind::ConnectionRefused => {
                        eprintln!("proxy to {target}: connection {next_id} not forwarded: {error}");
                    }
                    _ => {}
                }
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => {
                eprintln!("proxy to {target}: accept failed: {error}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn connect_pair(
    inbound: TcpStream,
    target: SocketAddr,
    id: u64,
    shared: &Arc<Shared>,
) -> std::io::Result<()> {
    inbound.set_nonblocking(false)?;
    let outbound = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    inbound.set_nodelay(true)?;
    outbound.set_nodelay(true)?;
    lock(&shared.connections).insert(id, (inbound.try_clone()?, outbound.try_clone()?));
    let mut threads = Vec::new();
    for (from, to) in [
        (inbound.try_clone()?, outbound.try_clone()?),
        (outbound, inbound),
    ] {
        let shared = shared.clone();
        threads.push(std::thread::spawn(move || {
            copy_delayed(from, to, id, &shared);
        }));
    }
    let mut all = lock(&shared.threads);
    // Threads of connections that have ended are joined as new ones come, so
    // the list stays as long as the open connections.
    let (finished, running): (Vec<_>, Vec<_>) = std::mem::take(&mut *all)
        .into_iter()
        .partition(|t| t.is_finished());
    *all = running;
    all.extend(threads);
    drop(all);
    for thread in finished {
        let _ = thread.join();
    }
    Ok(())
}

/// Copies one direction of a connection: a reader takes pieces off `from` as
/// they come and stamps each with when it may leave; this thread writes them
/// to `to` in order once due, at the bandwidth set. When either side ends, the
/// whole connection is shut down.
fn copy_delayed(from: TcpStream, mut to: TcpStream, id: u64, shared: &Arc<Shared>) {
    let (pieces, due) = mpsc::channel::<(Instant, Vec<u8>)>();
    let reader_shared = shared.clone();
    let mut reader_from = match from.try_clone() {
        Ok(stream) => stream,
        Err(_) => return,
    };
    let reader = std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match reader_from.read(&mut buffer) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let delay = reader_shared.settings.delay_us.load(Ordering::SeqCst);
                    let at = Instant::now() + Duration::from_micros(delay);
                    if pieces.send((at, buffer[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    for (at, piece) in due {
        let wait = at.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        if to.write_all(&piece).is_err() {
            break;
        }
        let bandwidth = shared.settings.bandwidth.load(Ordering::SeqCst);
        if bandwidth > 0 {
            let seconds = piece.len() as f64 / bandwidth as f64;
            std::thread::sleep(Duration::from_secs_f64(seconds));
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    let _ = reader.join();
    lock(&shared.connections).remove(&id);
}
