//! Real network partitions for the integration tests. A partitionable cluster
//! runs each member in a network namespace of its own, joined by a veth to a
//! bridge in a hub namespace that the test made; the `ferry` CLI runs in the
//! hub, so it reaches every member's client port whatever the members' links
//! do. Workers run in a namespace of their own, bridged like a member, that
//! reaches every member too unless the test cuts it from one
//! ([`Network::cut_workers_from`]). Every connection a member opens to another member is redirected
//! (DNAT in the dialling member's namespace) through a harness [`Proxy`] for that
//! directed link, which can delay, throttle or reset it; packets of a link are
//! dropped, all or at random, by iptables rules in the dialling member's
//! namespace that match the connection's original destination. So a cut member
//! keeps running and keeps answering its own clients, and its peers see
//! silence (packets dropped, no reset), as in a real partition.
//!
//! Nothing of this touches the machine's own network: the namespaces, veths,
//! bridge and rules exist only inside namespaces the test created, and are
//! deleted with them when the [`Network`] is dropped (on panic too). Every
//! cluster has its own hub, so the same subnet is used by every cluster at
//! once without meeting; namespace names carry the test process's id and a
//! counter, and namespaces left by a test process that no longer exists (it was
//! SIGKILLed) are deleted when the next network is made.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::proxy::Proxy;

/// The prefix of every namespace the harness makes.
const PREFIX: &str = "ferrytest-";
/// Member `id` has address 10.201.0.`id`; the workers' namespace has .253 and
/// the hub's bridge .254.
const SUBNET: [u8; 3] = [10, 201, 0];
const WORKERS_HOST: u8 = 253;
const HUB_HOST: u8 = 254;

/// Where a process of the test runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// The hub: clients, which reach every member.
    Hub,
    /// The workers' namespace: it reaches every member but those it is cut
    /// from.
    Workers,
    Member(u64),
}

/// The faults on one directed link: connections that `from` opens to `to`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkFault {
    /// Every packet dropped.
    pub cut: bool,
    /// The share of packets dropped at random (0.0 to 1.0), both directions.
    pub loss: f64,
    /// Added to each piece of data in each direction by the link's proxy.
    pub delay: Duration,
    /// Bytes per second in each direction (None: unlimited).
    pub bandwidth: Option<u64>,
}

impl LinkFault {
    pub fn is_healthy(&self) -> bool {
        *self == LinkFault::default()
    }
}

/// The namespaces, links and proxies of one partitionable cluster.
pub struct Network {
    hub: String,
    workers: String,
    members: BTreeMap<u64, String>,
    ports: BTreeMap<u64, u16>,
    proxies: BTreeMap<(u64, u64), Proxy>,
    faults: Mutex<BTreeMap<(u64, u64), LinkFault>>,
    /// The members the workers' namespace is cut from.
    workers_cut_from: Mutex<std::collections::BTreeSet<u64>>,
}

/// The address of member `id` inside the cluster's network.
pub fn member_ip(id: u64) -> Ipv4Addr {
    let host = u8::try_from(id)
        .ok()
        .filter(|host| (1..WORKERS_HOST).contains(host))
        .unwrap_or_else(|| panic!("member id {id} has no address in a partitionable cluster"));
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host)
}

fn workers_ip() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], WORKERS_HOST)
}

fn hub_ip() -> Ipv4Addr {
    Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], HUB_HOST)
}

fn namespace_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// A command that runs `program` inside network namespace `name`: through
/// `ip netns exec`, which joins the namespace and then executes `program` in
/// its own process (so the child's pid is the program's).
pub fn command_in(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", name]).arg(program);
    command
}

/// Runs a command to completion; an error names it and its output.
fn run(
    program: &str,
    args: &[&str],
    namespace: Option<&str>,
    input: Option<&str>,
) -> anyhow::Result<()> {
    let mut command = match namespace {
        Some(name) => command_in(name, program),
        None => Command::new(program),
    };
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run {program} (iproute2 and iptables are needed)"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        use std::io::Write;
        stdin.write_all(text.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "{program} {} failed{}: {}{}",
            args.join(" "),
            namespace.map(|n| format!(" in {n}")).unwrap_or_default(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args, None, None)
}

/// Deletes the namespaces a test process that no longer exists left behind.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "delete", &name]);
        }
    }
}

impl Network {
    /// Makes the hub and one namespace per member (`(id, port)`: the port the
    /// member listens on), the links between them, a proxy per directed link
    /// and the rules that send each member's connections to its peers through
    /// them. Fails with the reason when namespaces cannot be made (this needs
    /// root, or CAP_NET_ADMIN and CAP_SYS_ADMIN, and iproute2 and iptables).
    pub fn create(members: &[(u64, u16)]) -> anyhow::Result<Network> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        sweep_stale();
        let serial = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = format!("{PREFIX}{}-{serial}", std::process::id());
        let mut network = Network {
            hub: format!("{base}-hub"),
            workers: format!("{base}-workers"),
            members: members
                .iter()
                .map(|(id, _)| (*id, format!("{base}-m{id}")))
                .collect(),
            ports: members.iter().copied().collect(),
            proxies: BTreeMap::new(),
            faults: Mutex::new(BTreeMap::new()),
            workers_cut_from: Mutex::new(std::collections::BTreeSet::new()),
        };
        // From here on, dropping `network` deletes whatever was made.
        ip(&["netns", "add", &network.hub]).context(
            "cannot create a network namespace for a partitionable cluster \
             (the partition tests need root: `ip netns add` must work)",
        )?;
        let hub = network.hub.clone();
        let hub_cidr = format!("{}/24", hub_ip());
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", "br0", "type", "bridge"],
            vec!["addr", "add", &hub_cidr, "dev", "br0"],
            vec!["link", "set", "br0", "up"],
        ] {
            let mut all = vec!["-n", &hub];
            all.extend(args);
            ip(&all)?;
        }
        let attached = network
            .members
            .iter()
            .map(|(&id, name)| (format!("m{id}"), name, member_ip(id)))
            .chain(std::iter::once((
                "workers".to_string(),
                &network.workers,
                workers_ip(),
            )));
        for (veth, name, address) in attached {
            ip(&["netns", "add", name])?;
            let cidr = format!("{address}/24");
            ip(&[
                "-n", &hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                name,
            ])?;
            ip(&["-n", &hub, "link", "set", &veth, "master", "br0", "up"])?;
            ip(&["-n", name, "link", "set", "lo", "up"])?;
            ip(&["-n", name, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", name, "link", "set", "eth0", "up"])?;
        }
        for &(from, _) in members {
            for &(to, port) in members {
                if from == to {
                    continue;
                }
                let target = SocketAddr::new(IpAddr::V4(member_ip(to)), port);
                let hub = hub.clone();
                let proxy = Proxy::start(IpAddr::V4(hub_ip()), target, move || {
                    let file = File::open(namespace_path(&hub))?;
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                })
                .with_context(|| format!("cannot start the proxy from {from} to {to}"))?;
                network.proxies.insert((from, to), proxy);
            }
        }
        for &(id, _) in members {
            network.install_base_rules(id)?;
        }
        run(
            "iptables-restore",
            &[],
            Some(&network.workers),
            Some(
                "*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:FERRY-LINKS - [0:0]\n\
                 -A INPUT -j FERRY-LINKS\n-A OUTPUT -j FERRY-LINKS\nCOMMIT\n",
            ),
        )?;
        Ok(network)
    }

    /// The namespace a process started at `place` joins.
    pub fn namespace(&self, place: Place) -> &str {
        match place {
            Place::Hub => &self.hub,
            Place::Workers => &self.workers,
            Place::Member(id) => self
                .members
                .get(&id)
                .unwrap_or_else(|| panic!("no member {id} in the network")),
        }
    }

    /// A command that runs `program` at `place`.
    pub fn command(&self, place: Place, program: impl AsRef<std::ffi::OsStr>) -> Command {
        command_in(self.namespace(place), program)
    }

    /// The redirection of member `id`'s connections to each peer through the
    /// link's proxy, and the (empty) chain that holds the link's faults.
    fn install_base_rules(&self, id: u64) -> anyhow::Result<()> {
        let mut rules = String::from("*nat\n:OUTPUT ACCEPT [0:0]\n");
        for (&to, &port) in &self.ports {
            if to == id {
                continue;
            }
            let proxy = self.proxies[&(id, to)].address();
            let _ = writeln!(
                rules,
                "-A OUTPUT -d {}/32 -p tcp --dport {port} -j DNAT --to-destination {proxy}",
                member_ip(to)
            );
        }
        rules.push_str(
            "COMMIT\n*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:FERRY-LINKS - [0:0]\n\
             -A INPUT -j FERRY-LINKS\n-A OUTPUT -j FERRY-LINKS\nCOMMIT\n",
        );
        run(
            "iptables-restore",
            &[],
            Some(self.namespace(Place::Member(id))),
            Some(&rules),
        )
    }

    /// Rewrites member `from`'s rules for its links as `faults` says.
    fn apply_rules(
        &self,
        from: u64,
        faults: &BTreeMap<(u64, u64), LinkFault>,
    ) -> anyhow::Result<()> {
        let mut rules = String::from("*filter\n:FERRY-LINKS - [0:0]\n-F FERRY-LINKS\n");
        for (&(link_from, to), fault) in faults {
            if link_from != from {
                continue;
            }
            // The original destination names the peer even when the packet is
            // on its way to (or back from) the link's proxy.
            let connection = format!("-m conntrack --ctorigdst {}/32", member_ip(to));
            if fault.cut {
                let _ = writeln!(rules, "-A FERRY-LINKS {connection} -j DROP");
            } else if fault.loss > 0.0 {
                let _ = writeln!(
                    rules,
                    "-A FERRY-LINKS {connection} -m statistic --mode random --probability {:.4} -j DROP",
                    fault.loss.min(1.0)
                );
            }
        }
        rules.push_str("COMMIT\n");
        run(
            "iptables-restore",
            &["--noflush"],
            Some(self.namespace(Place::Member(from))),
            Some(&rules),
        )
    }

    /// Sets the faults of the links `links` (directed) to what `change` makes
    /// of them, and applies the result.
    fn change(&self, links: &[(u64, u64)], change: impl Fn(&mut LinkFault)) {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        for link in links {
            assert!(
                link.0 != link.1 && self.proxies.contains_key(link),
                "no link from {} to {}",
                link.0,
                link.1
            );
            let fault = faults.entry(*link).or_default();
            change(fault);
            let proxy = &self.proxies[link];
            proxy.set_delay(fault.delay);
            proxy.set_bandwidth(fault.bandwidth);
        }
        faults.retain(|_, fault| !fault.is_healthy());
        let sources: std::collections::BTreeSet<u64> = links.iter().map(|l| l.0).collect();
        for from in sources {
            self.apply_rules(from, &faults)
                .unwrap_or_else(|e| panic!("cannot change the links of member {from}: {e:#}"));
        }
    }

    fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// Every directed link between a member of `side` and a member not in it.
    fn links_across(&self, side: &[u64]) -> Vec<(u64, u64)> {
        let mut links = Vec::new();
        for a in self.ids() {
            for b in self.ids() {
                if a != b && side.contains(&a) != side.contains(&b) {
                    links.push((a, b));
                }
            }
        }
        links
    }

    /// Drops every packet of the connections `from` opens to `to` (Raft
    /// messages from `from` to `to`, its forwards and blob copies to `to`);
    /// `to`'s connections to `from` are untouched.
    pub fn cut(&self, from: u64, to: u64) {
        self.change(&[(from, to)], |fault| fault.cut = true);
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&self, a: u64, b: u64) {
        self.change(&[(a, b), (b, a)], |fault| fault.cut = true);
    }

    /// Cuts member `id` from every other member, both ways; its clients still
    /// reach it.
    pub fn isolate(&self, id: u64) {
        self.split(&[id]);
    }

    /// Cuts every link between the members of `side` and the others.
    pub fn split(&self, side: &[u64]) {
        self.change(&self.links_across(side), |fault| fault.cut = true);
    }

    /// Makes the link between `a` and `b` flaky both ways: `loss` of the
    /// packets dropped at random and `delay` added.
    pub fn flaky(&self, a: u64, b: u64, loss: f64, delay: Duration) {
        self.change(&[(a, b), (b, a)], |fault| {
            fault.loss = loss;
            fault.delay = delay;
        });
    }

    /// Limits the connections `from` opens to `to` to `bytes_per_second`.
    pub fn throttle(&self, from: u64, to: u64, bytes_per_second: u64) {
        self.change(&[(from, to)], |fault| {
            fault.bandwidth = Some(bytes_per_second)
        });
    }

    /// Closes every open connection `from` has to `to` (the link stays up).
    pub fn reset_connections(&self, from: u64, to: u64) {
        self.proxies
            .get(&(from, to))
            .unwrap_or_else(|| panic!("no link from {from} to {to}"))
            .reset_connections();
    }

    /// Restores the links between `a` and `b`, both ways.
    pub fn heal_between(&self, a: u64, b: u64) {
        self.change(&[(a, b), (b, a)], |fault| *fault = LinkFault::default());
    }

    /// Restores every link, the workers' included.
    pub fn heal(&self) {
        self.change(&self.all_links(), |fault| *fault = LinkFault::default());
        self.change_workers(|cut| cut.clear());
    }

    /// Drops every packet between the workers and member `id` (the workers'
    /// connections to it see silence, no reset); the other members, and the
    /// CLI in the hub, still reach it.
    pub fn cut_workers_from(&self, id: u64) {
        assert!(self.members.contains_key(&id), "no member {id}");
        self.change_workers(|cut| {
            cut.insert(id);
        });
    }

    /// The members the workers are cut from.
    pub fn workers_cut_from(&self) -> std::collections::BTreeSet<u64> {
        self.workers_cut_from
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes the set of members the workers are cut from and rewrites the
    /// workers' rules: by address, both ways (nothing dials the workers, and
    /// the workers' namespace has no NAT, so connection tracking may have
    /// started only after a connection did and would not tell its direction).
    fn change_workers(&self, change: impl FnOnce(&mut std::collections::BTreeSet<u64>)) {
        let mut cut = self
            .workers_cut_from
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        change(&mut cut);
        let mut rules = String::from("*filter\n:FERRY-LINKS - [0:0]\n-F FERRY-LINKS\n");
        for id in cut.iter() {
            let _ = writeln!(rules, "-A FERRY-LINKS -d {}/32 -j DROP", member_ip(*id));
            let _ = writeln!(rules, "-A FERRY-LINKS -s {}/32 -j DROP", member_ip(*id));
        }
        rules.push_str("COMMIT\n");
        run(
            "iptables-restore",
            &["--noflush"],
            Some(&self.workers),
            Some(&rules),
        )
        .unwrap_or_else(|e| panic!("cannot change the workers' links: {e:#}"));
    }

    fn all_links(&self) -> Vec<(u64, u64)> {
        self.proxies.keys().copied().collect()
    }

    /// The faults now in place, by directed link (healthy links left out).
    pub fn faults(&self) -> BTreeMap<(u64, u64), LinkFault> {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Network {
    /// Stops the proxies and deletes every namespace (with its veths, bridge
    /// and rules). Processes still inside a member's namespace keep it alive
    /// until they exit; the cluster kills them before its network is dropped.
    fn drop(&mut self) {
        self.proxies.clear();
        let others = [&self.workers, &self.hub];
        for name in self.members.values().chain(others) {
            if namespace_path(name).exists()
                && let Err(error) = ip(&["netns", "delete", name])
            {
                eprintln!("cannot delete network namespace {name}: {error:#}");
            }
        }
    }
}

impl crate::Cluster {
    /// `members` coordinators forming one Raft group, each in a network
    /// namespace of its own (see the module's documentation), all running and
    /// answering; the CLI runs in the hub, workers in a namespace of their
    /// own. The coordinators' certificate names every member's address.
    pub fn start_partitionable(members: u64, extra: &str) -> crate::Cluster {
        let mut cluster = crate::Cluster::unstarted(members, extra);
        let mut ips = Vec::new();
        for slot in &mut cluster.coordinators {
            slot.host = IpAddr::V4(member_ip(slot.id));
            ips.push(slot.host.to_string());
        }
        for id in 1..=members {
            cluster
                .pki
                .issue_member(id, &ips)
                .expect("coordinator certificate naming every member's address");
        }
        let ports: Vec<(u64, u16)> = cluster
            .coordinators
            .iter()
            .map(|c| (c.id, c.port))
            .collect();
        cluster.network = Some(Network::create(&ports).unwrap_or_else(|e| panic!("{e:#}")));
        for id in 1..=members {
            cluster.spawn_coordinator(id, false);
        }
        cluster.wait_answering();
        cluster
    }

    /// The network of a partitionable cluster.
    pub fn network(&self) -> &Network {
        self.network
            .as_ref()
            .expect("not a partitionable cluster (Cluster::start_partitionable)")
    }

    /// A command that runs `program` at `place` when the cluster is
    /// partitionable, and here otherwise.
    pub(crate) fn command_at(&self, place: Place, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.network {
            Some(network) => network.command(place, program),
            None => Command::new(program),
        }
    }

    /// Runs `ferry` as the client user with the members' addresses in the
    /// order `order` gives (a client whose first address is a given member).
    pub fn ferry_via(&self, order: &[u64], args: &[&str]) -> crate::CliResult {
        let addresses: Vec<String> = order
            .iter()
            .map(|id| self.coordinators[self.index_of(*id)].address())
            .collect();
        self.ferry_to(
            &addresses.join(","),
            &self.pki.ca(),
            &self.pki.cert(crate::CLIENT),
            &self.pki.key(crate::CLIENT),
            args,
        )
    }
}
