//! An etcd cluster of real `etcd` processes on 127.0.0.1, for `ferry-bench etcd`:
//! the reference that Ferry's commit throughput is held against (issue 14). Only
//! built with the `etcd` feature; nothing outside the benchmark depends on it.
//!
//! The members run the installed `etcd` binary (Debian's `etcd-server` gives
//! 3.4) with its defaults apart from addresses, data folders and a larger backend
//! quota: in particular its own `fdatasync` of the WAL before every answer is on.
//! With `tls`, clients and peers talk mutual TLS with certificates made by `ferry
//! certs`, as Ferry's coordinators do; otherwise plain HTTP/2.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tonic::transport::{Channel, Endpoint};

use crate::load::Caller;
use crate::{CLIENT, Daemon, Pki, free_port};

/// The certificate every member presents, to clients and to its peers (a
/// coordinator's certificate names `localhost` and `127.0.0.1`).
const MEMBER_CERT: &str = "member-1";

/// Running etcd members; every one is killed when this is dropped.
pub struct EtcdCluster {
    // Dropped in this order: the members are killed before their folder goes.
    members: Vec<EtcdMember>,
    pki: Option<Pki>,
    root: tempfile::TempDir,
}

struct EtcdMember {
    client_port: u16,
    daemon: Daemon,
}

impl EtcdCluster {
    /// Starts `members` members of one new cluster from `binary` (data under a new
    /// temporary folder, where Ferry's benchmark clusters also keep theirs) and
    /// waits, at most 30 s, until every member answers.
    pub async fn start(binary: &Path, members: usize, tls: bool) -> anyhow::Result<EtcdCluster> {
        if members == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        let root = tempfile::tempdir().context("temporary folder for etcd")?;
        let pki = if tls {
            let pki = Pki::new(&root.path().join("certs"))?;
            pki.issue_member(1, &[])?;
            pki.issue("client", CLIENT)?;
            Some(pki)
        } else {
            None
        };
        let scheme = if tls { "https" } else { "http" };
        let ports: Vec<(u16, u16)> = (0..members).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(n, (_, peer))| format!("m{n}={scheme}://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            pki,
            root,
        };
        for (n, (client_port, peer_port)) in ports.iter().copied().enumerate() {
            let name = format!("m{n}");
            let log = cluster.root.path().join(format!("{name}.log"));
            let log_file = std::fs::File::create(&log)?;
            let mut command = Command::new(binary);
            command
                .arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(cluster.root.path().join(format!("{name}-data")))
                .arg(format!(
                    "--listen-client-urls={scheme}://127.0.0.1:{client_port}"
                ))
                .arg(format!(
                    "--advertise-client-urls={scheme}://127.0.0.1:{client_port}"
                ))
                .arg(format!(
                    "--listen-peer-urls={scheme}://127.0.0.1:{peer_port}"
                ))
                .arg(format!(
                    "--initial-advertise-peer-urls={scheme}://127.0.0.1:{peer_port}"
                ))
                .arg(format!("--initial-cluster={initial_cluster}"))
                .args([
                    "--initial-cluster-state=new",
                    "--initial-cluster-token=ferry-bench",
                ])
                // 8 GiB instead of 2, so that long windows do not raise the space alarm.
                .arg("--quota-backend-bytes=8589934592")
                .args(["--logger=zap", "--log-outputs=stderr"])
                .stdin(Stdio::null())
                .stdout(log_file.try_clone()?)
                .stderr(log_file);
            if let Some(pki) = &cluster.pki {
                let (ca, cert, key) = (pki.ca(), pki.cert(MEMBER_CERT), pki.key(MEMBER_CERT));
                for (flag, path) in [
                    ("--trusted-ca-file", &ca),
                    ("--cert-file", &cert),
                    ("--key-file", &key),
                    ("--peer-trusted-ca-file", &ca),
                    ("--peer-cert-file", &cert),
                    ("--peer-key-file", &key),
                ] {
                    command.arg(format!("{flag}={}", path.display()));
                }
                command.args(["--client-cert-auth", "--peer-client-cert-auth"]);
            }
            let child = command
                .spawn()
                .with_context(|| format!("cannot start {}", binary.display()))?;
            cluster.members.push(EtcdMember {
                client_port,
                daemon: Daemon { child, log },
            });
        }
        cluster.wait_serving().await?;
        Ok(cluster)
    }

    /// The folder holding every member's data and log.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn log_path(&self, member: usize) -> PathBuf {
        self.members[member].daemon.log.clone()
    }

    pub fn pid(&self, member: usize) -> i32 {
        self.members[member].daemon.pid()
    }

    /// A channel of its own (one HTTP/2 connection) to `member`, set up as the
    /// benchmark's connections to Ferry are (`ferry_common::channel::endpoint`:
    /// TCP_NODELAY, 10 s keep-alive; with TLS the same client certificate
    /// material and verification).
    pub async fn connect(&self, member: usize) -> anyhow::Result<Channel> {
        let port = self.members[member].client_port;
        let endpoint = match &self.pki {
            Some(pki) => {
                let tls = ferry_common::pki::TlsFiles {
                    ca: pki.ca(),
                    cert: pki.cert(CLIENT),
                    key: pki.key(CLIENT),
                }
                .load()?;
                ferry_common::channel::endpoint(&format!("127.0.0.1:{port}"), &tls)?
            }
            None => Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10)),
        };
        Ok(endpoint.timeout(Duration::from_secs(5)).connect().await?)
    }

    async fn client(&self, member: usize) -> anyhow::Result<etcd_client::Client> {
        let channel = self.connect(member).await?;
        Ok(etcd_client::Client::from_channel(etcd_client::Channel::Tonic(channel), None).await?)
    }

    /// The index of the member that leads, as the members themselves report it.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for member in 0..self.members.len() {
                let Ok(mut client) = self.client(member).await else {
                    continue;
                };
                let Ok(status) = client.status().await else {
                    continue;
                };
                let (leader, own) = (status.leader(), status.header().map(|h| h.member_id()));
                if leader != 0 && Some(leader) == own {
                    return Ok(member);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("no etcd member reported itself leader within 30 s")
    }

    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        for member in 0..self.members.len() {
            loop {
                if let Ok(Some(status)) = self.members[member].daemon.child.try_wait() {
                    bail!(
                        "etcd member {member} exited ({status}): {}",
                        self.members[member].daemon.log_text()
                    );
                }
                if let Ok(mut client) = self.client(member).await
                    && client.status().await.is_ok()
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "etcd member {member} did not answer within 30 s: {}",
                        self.members[member].daemon.log_text()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

/// One client of the etcd load: puts of `value` under keys of its own, one new
/// key per put (as every Ferry submission creates a new run).
pub struct PutCaller {
    kv: etcd_client::KvClient,
    prefix: String,
    next: u64,
    value: Vec<u8>,
}

impl PutCaller {
    pub async fn new(channel: Channel, client: usize, value: Vec<u8>) -> anyhow::Result<PutCaller> {
        let client_handle =
            etcd_client::Client::from_channel(etcd_client::Channel::Tonic(channel), None).await?;
        Ok(PutCaller {
            kv: client_handle.kv_client(),
            prefix: format!("bench/{client:04}/"),
            next: 0,
            value,
        })
    }
}

impl Caller for PutCaller {
    async fn call(&mut self) -> bool {
        self.next += 1;
        let key = format!("{}{:010}", self.prefix, self.next);
        self.kv.put(key, self.value.clone(), None).await.is_ok()
    }
}
