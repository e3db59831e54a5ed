//! `ferry`: submit and follow pipelines, read logs and artifacts, manage
//! certificates and the coordinators' membership, and run a local cluster with
//! `ferry dev`.

mod commands;
mod compare;
mod lineage;
mod render;
mod ui;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use ferry_client::config::Overrides;

use crate::commands::shared::{self, Client, LocalSpec, Output, Read};
use crate::commands::{
    artifacts, audit, cancel, certs, cluster, gc, logs, metrics, pins, projects, rerun, run, runs,
    schedules, secrets, status, workers,
};
use crate::compare::Goal;

/// Ferry: run ML pipelines on your cluster.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    /// Output format of listing commands.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// Where the coordinators are and which certificate to present. Flags win over
/// environment variables, which win over the config file.
#[derive(Args, Clone)]
struct Connection {
    /// Client config file [default: ~/.config/ferry/config.toml, written by 'ferry dev'].
    #[arg(long, global = true, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// The coordinators' addresses, HOST:PORT[,HOST:PORT...]; the first that
    /// answers is used.
    #[arg(long, global = true, env = "FERRY_COORDINATOR")]
    coordinator: Option<String>,
    /// The cluster CA certificate.
    #[arg(long, global = true, env = "FERRY_CA")]
    ca: Option<PathBuf>,
    /// Your client certificate.
    #[arg(long, global = true, env = "FERRY_CERT")]
    cert: Option<PathBuf>,
    /// Your client certificate's private key.
    #[arg(long, global = true, env = "FERRY_KEY")]
    key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a pipeline, upload its code bundle and submit a run.
    Run {
        /// The pipeline file (YAML), or its folder (holding pipeline.yaml); the
        /// folder is the code bundle.
        pipeline: PathBuf,
        /// Override a parameter: --param k=v (repeatable).
        #[arg(long = "param", short = 'p')]
        params: Vec<String>,
        /// Follow the run until it ends; exit 0 only if it succeeded.
        #[arg(long, short = 'w')]
        watch: bool,
        /// Run every step, taking no results from the cache.
        #[arg(long)]
        no_cache: bool,
    },
    /// Pack a folder as 'ferry run' packs it (honouring .ferryignore) and show
    /// the code bundle's digest, size and files; nothing is uploaded.
    Bundle {
        /// The folder [default: the current one].
        #[arg(default_value = ".")]
        folder: PathBuf,
        /// Also list every entry of the archive.
        #[arg(long)]
        list: bool,
    },
    /// List runs, or set them side by side with 'ferry runs diff' and 'ferry runs
    /// compare'.
    #[command(args_conflicts_with_subcommands = true)]
    Runs {
        #[command(flatten)]
        read: Read,
        /// Only the runs whose parameters and metrics meet every condition, e.g.
        /// 'accuracy>0.9,seed=42' (operators = != < <= > >=); adds a column per
        /// name.
        #[arg(long = "where", value_name = "CONDITIONS")]
        conditions: Option<String>,
        /// Show the newest N runs (that meet --where); 0: every run.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
        #[command(subcommand)]
        command: Option<RunsCommand>,
    },
    /// Start a new run of an earlier run's pipeline and code, reusing the outputs
    /// of its steps that succeeded.
    Rerun {
        run: u64,
        /// Run again from this step (or sweep) and every step after it
        /// [default: from the steps that did not succeed].
        #[arg(long, value_name = "STEP")]
        from: Option<String>,
        /// Follow the new run until it ends; exit 0 only if it succeeded.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Show every step of a run: state, attempt, worker, duration, exit code, reason.
    /// A run of more than 1,000 steps: its counts by state and a page of steps.
    Status {
        run: u64,
        /// Also list every attempt of every step.
        #[arg(long)]
        attempts: bool,
        #[command(flatten)]
        steps: status::StepQuery,
        #[command(flatten)]
        read: Read,
    },
    /// Follow a run until it ends, showing each step's state.
    Watch { run: u64 },
    /// The metrics a run's steps reported (through FERRY_METRICS): per step and
    /// metric, the last value, its step number and how many values there were.
    Metrics {
        run: u64,
        /// Sort the steps by this metric, best first, and mark the best one.
        #[arg(long, value_name = "NAME")]
        metric: Option<String>,
        /// Whether a higher or a lower --metric is better.
        #[arg(long, value_enum, default_value_t = Goal::Max, requires = "metric")]
        goal: Goal,
        #[command(flatten)]
        read: Read,
    },
    /// Where an artifact came from: the step that made it, its command, code and
    /// parameters, and the same for each of its inputs, down to the sources.
    Lineage {
        /// The artifact's full BLAKE3 digest (as 'ferry artifacts RUN' lists it).
        digest: String,
        #[command(flatten)]
        read: Read,
    },
    /// Cancel a run: running steps are killed, nothing new starts.
    Cancel { run: u64 },
    /// List workers (capacity, what is in use, labels, mode, last heartbeat), or
    /// cordon, drain or uncordon one.
    #[command(args_conflicts_with_subcommands = true)]
    Workers {
        #[command(flatten)]
        read: Read,
        #[command(subcommand)]
        command: Option<WorkersCommand>,
    },
    /// Print a run's logs (all steps, or one); -f follows live output.
    Logs {
        run: u64,
        step: Option<String>,
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// List a run's artifacts, download one with 'ferry artifacts get', or pin
    /// one so that garbage collection keeps it.
    #[command(args_conflicts_with_subcommands = true)]
    Artifacts {
        run: Option<u64>,
        #[command(flatten)]
        read: Read,
        #[command(subcommand)]
        command: Option<ArtifactsCommand>,
    },
    /// Start a pipeline on a cron schedule (UTC), and list, pause, resume or
    /// delete schedules.
    Schedules {
        #[command(subcommand)]
        command: SchedulesCommand,
    },
    /// Delete the logs and artifacts of old finished runs (never an artifact a
    /// kept run, the cache or a pin still uses).
    Gc {
        /// Keep the N latest finished runs of each pipeline.
        #[arg(long, value_name = "N")]
        keep_last: u32,
        /// Say what would be deleted without deleting anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// The audit log: who asked for what, when, and what came of it
    /// (administrators: every record; a project's owners: their project's).
    Audit {
        /// Only records since a time (2026-12-06T14:00:00Z) or for how long
        /// (1h, 7d).
        #[arg(long, value_name = "TIME|AGO")]
        since: Option<String>,
        /// Only the requests of this user (certificate name).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// Only the records of this project.
        #[arg(long, value_name = "PROJECT")]
        project: Option<String>,
        /// At most the newest N matching records (default 1000, at most 10000).
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: u32,
    },
    /// Projects and their members (viewer < editor < owner): create, list, add
    /// or remove members.
    Projects {
        #[command(subcommand)]
        command: ProjectsCommand,
    },
    /// Groups of users: `@GROUP` as a project member or administrator stands
    /// for every user in it (administrators change them).
    Groups {
        #[command(subcommand)]
        command: GroupsCommand,
    },
    /// The cluster's administrators: list, add, remove.
    Admins {
        #[command(subcommand)]
        command: AdminsCommand,
    },
    /// Show and change the coordinators' replication group.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Cluster secrets of a project: set, list (never values), delete, and seal
    /// them again with a new key.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Create a cluster CA and issue certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Run a one-process local cluster (a coordinator and one worker).
    Dev {
        /// Where the cluster keeps its state, certificates and work directories
        /// [default: ~/.local/share/ferry/dev].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        /// CPUs the worker offers [default: all of this machine's].
        #[arg(long)]
        cpus: Option<f64>,
        /// Memory the worker offers, e.g. 8Gi [default: all of this machine's].
        #[arg(long)]
        memory: Option<String>,
        /// Serve the coordinator's Prometheus metrics at http://ADDRESS/metrics
        /// (plain HTTP; port 0 picks a free port) [default: not served].
        #[arg(long, value_name = "ADDRESS")]
        metrics_listen: Option<SocketAddr>,
    },
    /// Serve a web UI on this machine that acts as you (your client
    /// certificate) on the cluster: runs, DAGs, live logs, metric curves.
    Ui {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Allow a non-loopback --listen address. Whoever reaches it acts as
        /// you on the cluster, with your certificate's rights.
        #[arg(long)]
        expose: bool,
        /// A host name browsers reach the UI by (repeatable; with --expose):
        /// requests naming any other host are refused.
        #[arg(long = "allow-host", value_name = "NAME[:PORT]", requires = "expose")]
        allow_hosts: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Every member: address, role (learners too), term, commit and applied
    /// index, lag, last contact, what a learner's promotion waits for; which
    /// member answered and which one leads.
    Status,
    /// Add a coordinator to the group as a learner (it copies the log but does
    /// not vote), then show the group. The leader promotes it to voter once its
    /// peer address answers as a coordinator of this cluster and it has caught
    /// up. Administrators only (`admins` in coordinator.toml).
    AddMember {
        /// The new member's id (unique in the group, never reused).
        #[arg(long)]
        id: u64,
        /// Where clients and workers reach it, HOST:PORT.
        #[arg(long, value_name = "HOST:PORT", value_parser = parse_address_arg)]
        client_address: String,
        /// Where the other coordinators reach it [default: chosen by the cluster].
        #[arg(long, value_name = "HOST:PORT", value_parser = parse_address_arg)]
        peer_address: Option<String>,
    },
    /// Remove a coordinator (a voter, or a learner even if it never started)
    /// from the group, then show the group. Refused, with the reason, when the
    /// voters left that the leader can reach would not be a quorum.
    /// Administrators only.
    RemoveMember {
        #[arg(long)]
        id: u64,
    },
}

fn parse_address_arg(text: &str) -> Result<String, String> {
    ferry_common::channel::parse_address(text.trim())
        .map(|_| text.trim().to_string())
        .map_err(|e| e.to_string())
}

#[derive(Subcommand)]
pub enum WorkersCommand {
    /// Give the worker no new work; what runs there goes on.
    Cordon { name: String },
    /// Give the worker no new work and let its running steps finish, so that it
    /// can be taken down; 'ferry workers' shows when it is idle.
    Drain { name: String },
    /// Let the worker take new work again (undoes cordon and drain).
    Uncordon { name: String },
}

#[derive(Subcommand)]
pub enum RunsCommand {
    /// What differs between two runs: parameters, code, inputs, the steps that
    /// would run again, and metrics.
    Diff {
        a: u64,
        b: u64,
        #[command(flatten)]
        read: Read,
    },
    /// Runs side by side: state, the parameters that differ between them and
    /// every metric; --metric ranks them.
    Compare {
        #[arg(required = true, value_name = "RUN")]
        runs: Vec<u64>,
        /// Sort by this metric, best first, and name the best run.
        #[arg(long, value_name = "NAME")]
        metric: Option<String>,
        /// Whether a higher or a lower --metric is better.
        #[arg(long, value_enum, default_value_t = Goal::Max, requires = "metric")]
        goal: Goal,
        #[command(flatten)]
        read: Read,
    },
}

#[derive(Subcommand)]
pub enum SchedulesCommand {
    /// Validate a pipeline, upload its code bundle and start it on a schedule.
    Create {
        /// The schedule's name (letters, digits, '_', '.', '-').
        name: String,
        /// When to start a run, in UTC: 5 fields (minute hour day-of-month month
        /// day-of-week), or 6 with seconds first, e.g. '0 2 * * *'.
        #[arg(long, value_name = "EXPR")]
        cron: String,
        /// The pipeline file (YAML), or its folder (holding pipeline.yaml); the
        /// folder is the code bundle.
        #[arg(long, value_name = "FILE|DIR")]
        pipeline: PathBuf,
        /// Override a parameter: --param k=v (repeatable).
        #[arg(long = "param", short = 'p')]
        params: Vec<String>,
    },
    /// Every schedule: cron, pipeline, state, last and next tick, runs started.
    List {
        #[command(flatten)]
        read: Read,
    },
    /// Start no runs until resumed (ticks while paused are skipped).
    Pause { name: String },
    /// Start runs again from the next tick.
    Resume { name: String },
    /// Delete a schedule; the runs it started stay.
    Delete { name: String },
}

#[derive(Subcommand)]
pub enum ProjectsCommand {
    /// Create a project (administrators only); its first owner is you or --owner.
    Create {
        /// The project's name, as pipelines name it in `project:`.
        name: String,
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
    },
    /// The projects you are a member of (every project for an administrator),
    /// and `default`.
    List {
        #[command(flatten)]
        read: Read,
    },
    /// Add or remove a project's members (its owners and administrators only).
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
}

#[derive(Subcommand)]
pub enum MembersCommand {
    /// Add a member, or change a member's role.
    Add {
        project: String,
        /// The user: the name in its client certificate.
        user: String,
        #[arg(long, default_value = "viewer", value_parser = ["viewer", "editor", "owner"])]
        role: String,
    },
    /// Remove a member.
    Remove { project: String, user: String },
}

#[derive(Subcommand)]
pub enum GroupsCommand {
    /// Groups and their users.
    List {
        #[command(flatten)]
        read: Read,
    },
    /// Add a user to a group (made with its first user).
    Add { group: String, user: String },
    /// Remove a user from a group.
    Remove { group: String, user: String },
    /// Delete a group and every role given to it.
    Delete { group: String },
}

#[derive(Subcommand)]
pub enum AdminsCommand {
    /// Administrators: those in `admins` of coordinator.toml and those added.
    List {
        #[command(flatten)]
        read: Read,
    },
    /// Make a user an administrator (administrators only).
    Add { user: String },
    /// Remove an administrator added with 'ferry admins add'.
    Remove { user: String },
}

#[derive(Subcommand)]
enum ArtifactsCommand {
    /// Download one artifact and verify its digest.
    Get {
        run: u64,
        step: String,
        name: String,
        /// Where to write it [default: the artifact's file name].
        #[arg(short = 'o', long = "out", value_name = "PATH")]
        dest: Option<PathBuf>,
    },
    /// Keep an artifact through garbage collection, under a tag.
    Pin {
        /// The artifact's full BLAKE3 digest.
        digest: String,
        /// A name for the pin [default: the digest].
        #[arg(long, value_name = "NAME")]
        tag: Option<String>,
    },
    /// Remove a pin; the artifact can then be collected once no run keeps it.
    Unpin { tag: String },
    /// List pins.
    Pins {
        #[command(flatten)]
        read: Read,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Set a secret (a new version if it exists); the value is read from a file
    /// or an environment variable, never from the command line.
    Set {
        /// 1 to 64 characters from a-z, 0-9, '_' and '-', starting with a letter.
        name: String,
        #[arg(long, default_value = ferry_common::spec::DEFAULT_PROJECT)]
        project: String,
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "from_env",
            required_unless_present = "from_env"
        )]
        from_file: Option<PathBuf>,
        #[arg(long, value_name = "VAR")]
        from_env: Option<String>,
    },
    /// List secrets: names, versions, who set them and when; never values.
    List {
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        read: Read,
    },
    Delete {
        name: String,
        #[arg(long, default_value = ferry_common::spec::DEFAULT_PROJECT)]
        project: String,
    },
    /// Seal every secret again with the coordinators' current `secrets_key`.
    RotateKey,
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a cluster secrets key: 32 random bytes, mode 0600, never over an
    /// existing file.
    SecretsKey { path: PathBuf },
    /// Create the cluster CA (ca.pem, ca-key.pem) in a directory.
    Init {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Issue a key and certificate with a role bound into it.
    Issue {
        /// Directory holding the CA; the new files go there too unless --out is given.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_parser = ["coordinator", "worker", "client"])]
        role: String,
        /// The holder's name (workers and clients).
        #[arg(long, required_unless_present = "member", conflicts_with = "member")]
        name: Option<String>,
        /// The member id a coordinator's certificate speaks for: its name is
        /// member-<id> and only the coordinator configured with that `id` uses it.
        #[arg(long, value_name = "ID")]
        member: Option<u64>,
        /// DNS names the certificate is valid for (coordinators).
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses the certificate is valid for (coordinators).
        #[arg(long)]
        ip: Vec<IpAddr>,
        /// How long the certificate is valid from now, e.g. 12h, 90d or "30d 12h"
        /// (default: 90d for clients, 731d for coordinators and workers).
        #[arg(long, value_name = "DURATION")]
        valid_for: Option<String>,
    },
    /// Revoke a certificate (administrators): by serial number (as 'issue'
    /// printed it), or every certificate issued for a name until now. Every
    /// coordinator refuses it from its next request on.
    Revoke {
        /// A serial number (hexadecimal, ':' allowed) or a certificate name.
        target: String,
        /// Take TARGET as a name even if it looks like a serial number.
        #[arg(long)]
        name: bool,
    },
    /// List the revoked serial numbers and names.
    Revoked,
}

fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// `println!` panics when standard output is a pipe whose reader has gone
/// (`ferry runs | head`); like any Unix tool, the CLI then ends quietly instead,
/// with the status a process killed by SIGPIPE has (141).
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> std::process::ExitCode {
    quiet_on_closed_stdout();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            // Spec diagnostics already start with "error: ", one per line.
            match error.downcast_ref::<ferry_common::spec::SpecError>() {
                Some(spec) => eprintln!("{spec}"),
                None => eprintln!("error: {error:#}"),
            }
            std::process::ExitCode::from(2)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let overrides = Overrides {
        config: cli.connection.config.clone(),
        coordinator: cli.connection.coordinator.clone(),
        ca: cli.connection.ca.clone(),
        cert: cli.connection.cert.clone(),
        key: cli.connection.key.clone(),
    };
    let output = cli.output;
    let ok = std::process::ExitCode::SUCCESS;
    match cli.command {
        Command::Certs {
            command:
                command @ (CertsCommand::Init { .. }
                | CertsCommand::SecretsKey { .. }
                | CertsCommand::Issue { .. }),
        } => {
            init_tracing("warn");
            match command {
                CertsCommand::Init { dir } => certs::init(&dir)?,
                CertsCommand::SecretsKey { path } => secrets::create_key(&path)?,
                CertsCommand::Issue {
                    dir,
                    out,
                    role,
                    name,
                    member,
                    dns,
                    ip,
                    valid_for,
                } => certs::issue(certs::IssueRequest {
                    dir: &dir,
                    out,
                    role: &role,
                    holder: certs::Holder::from_arguments(name, member),
                    dns: &dns,
                    ip: &ip,
                    valid_for: valid_for.as_deref(),
                })?,
                CertsCommand::Revoke { .. } | CertsCommand::Revoked => {
                    unreachable!("matched above")
                }
            }
            Ok(ok)
        }
        Command::Dev {
            data_dir,
            listen,
            cpus,
            memory,
            metrics_listen,
        } => {
            init_tracing("warn,ferry_coordinator=info,ferry_worker=info");
            // `ferry dev` is a coordinator and a worker in one process: the same
            // fail-stop rules as the daemons.
            ferry_common::tasks::install_panic_hook();
            let (stop, shutdown) = tokio::sync::watch::channel(false);
            let signal = tokio::spawn(async move {
                ferry_common::signals::terminated().await;
                eprintln!("ferry dev: stopping");
                ferry_common::signals::exit_after(
                    ferry_common::signals::STOP_DEADLINE,
                    "ferry dev",
                );
                let _ = stop.send(true);
            });
            let result = ferry_client::dev::run_dev(
                ferry_client::dev::DevOptions {
                    data_dir,
                    config: overrides.config.clone(),
                    listen,
                    cpus,
                    memory,
                    metrics_listen,
                },
                shutdown,
            )
            .await;
            signal.abort();
            result?;
            Ok(ok)
        }
        Command::Ui {
            listen,
            expose,
            allow_hosts,
        } => {
            init_tracing("warn,ferry=info");
            let config = ferry_client::ClientConfig::resolve(&overrides)?;
            let config_source = match &overrides.config {
                Some(path) => path.display().to_string(),
                None => ferry_client::default_config_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| "flags and environment".into()),
            };
            let options = ui::UiOptions {
                listen,
                expose,
                allow_hosts,
                config_source,
            };
            ui::serve(&config, options, ferry_common::signals::terminated()).await?;
            Ok(ok)
        }
        Command::Bundle { folder, list } => {
            init_tracing("warn");
            commands::bundle::show(&folder, list, output)?;
            Ok(ok)
        }
        mut command => {
            init_tracing("warn");
            // A pipeline may be named by its file or by its folder.
            if let Command::Run { pipeline, .. }
            | Command::Schedules {
                command: SchedulesCommand::Create { pipeline, .. },
            } = &mut command
            {
                *pipeline = shared::pipeline_file(pipeline)?;
            }
            // A bad spec is reported even when no coordinator is reachable.
            let validated = match &command {
                Command::Run {
                    pipeline, params, ..
                } => Some(shared::validate(pipeline, params)?),
                Command::Schedules {
                    command:
                        SchedulesCommand::Create {
                            name,
                            pipeline,
                            params,
                            cron,
                        },
                } => {
                    // The coordinator's own check of a schedule's name and cron.
                    let now = ferry_common::time::now_ms();
                    if let Some(problem) = ferry_common::spec::schedule_problem(name, cron, now) {
                        bail!(problem);
                    }
                    Some(shared::validate(pipeline, params)?)
                }
                _ => None,
            };
            let config = ferry_client::ClientConfig::resolve(&overrides)?;
            if let Some(warning) =
                certs::expiry_warning(&config.tls.cert, ferry_common::time::now_ms())
            {
                eprintln!("{warning}");
            }
            let mut connection = ferry_client::Connection::open(&config).await?;
            remote(&mut connection, command, validated, output).await
        }
    }
}

/// Runs a command against the coordinator; `validated` is the pipeline of a `run`
/// or `schedules create` command when it was already validated before connecting.
async fn remote(
    client: &mut Client,
    command: Command,
    validated: Option<LocalSpec>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            pipeline,
            params,
            watch: follow,
            no_cache,
        } => {
            let local = match validated {
                Some(local) => local,
                None => shared::validate(&pipeline, &params)?,
            };
            let run = run::submit(client, &pipeline, local, no_cache).await?;
            if follow {
                return status::watch(client, run).await;
            }
        }
        Command::Runs {
            read,
            conditions,
            limit,
            command: None,
        } => runs::list(client, read, conditions.as_deref(), limit, output).await?,
        Command::Runs {
            command: Some(RunsCommand::Diff { a, b, read }),
            ..
        } => runs::diff(client, a, b, read, output).await?,
        Command::Runs {
            command:
                Some(RunsCommand::Compare {
                    runs,
                    metric,
                    goal,
                    read,
                }),
            ..
        } => runs::compare(client, &runs, metric.as_deref(), goal, read, output).await?,
        Command::Rerun {
            run,
            from,
            watch: follow,
        } => {
            let new_run = rerun::rerun(client, run, from).await?;
            if follow {
                return status::watch(client, new_run).await;
            }
        }
        Command::Status {
            run,
            attempts,
            steps,
            read,
        } => status::status(client, run, attempts, &steps, read, output).await?,
        Command::Watch { run } => return status::watch(client, run).await,
        Command::Metrics {
            run,
            metric,
            goal,
            read,
        } => metrics::metrics(client, run, metric.as_deref(), goal, read, output).await?,
        Command::Lineage { digest, read } => {
            commands::lineage::lineage(client, &digest, read, output).await?
        }
        Command::Cancel { run } => cancel::cancel(client, run).await?,
        Command::Workers {
            command: Some(command),
            ..
        } => match command {
            WorkersCommand::Cordon { name } => workers::cordon(client, name, output).await?,
            WorkersCommand::Drain { name } => workers::drain(client, name, output).await?,
            WorkersCommand::Uncordon { name } => workers::uncordon(client, name, output).await?,
        },
        Command::Workers {
            read,
            command: None,
        } => workers::list(client, read, output).await?,
        Command::Logs { run, step, follow } => logs::logs(client, run, step, follow).await?,
        Command::Cluster { command } => match command {
            ClusterCommand::Status => cluster::status(client, output).await?,
            ClusterCommand::AddMember {
                id,
                client_address,
                peer_address,
            } => cluster::add_member(client, id, client_address, peer_address, output).await?,
            ClusterCommand::RemoveMember { id } => {
                cluster::remove_member(client, id, output).await?
            }
        },
        Command::Artifacts { run, read, command } => match (run, command) {
            (
                _,
                Some(ArtifactsCommand::Get {
                    run,
                    step,
                    name,
                    dest,
                }),
            ) => artifacts::download(client, run, &step, &name, dest.as_deref()).await?,
            (_, Some(ArtifactsCommand::Pin { digest, tag })) => {
                pins::pin(client, &digest, tag.as_deref(), output).await?
            }
            (_, Some(ArtifactsCommand::Unpin { tag })) => pins::unpin(client, &tag, output).await?,
            (_, Some(ArtifactsCommand::Pins { read })) => pins::list(client, read, output).await?,
            (Some(run), None) => artifacts::list(client, run, read, output).await?,
            (None, None) => {
                bail!(
                    "name a run: 'ferry artifacts RUN' or 'ferry artifacts get RUN STEP NAME' \
                     (or list pins: 'ferry artifacts pins')"
                )
            }
        },
        Command::Schedules { command } => match command {
            SchedulesCommand::List { read } => schedules::list(client, read, output).await?,
            SchedulesCommand::Create {
                name,
                cron,
                pipeline,
                params,
            } => {
                let local = match validated {
                    Some(local) => local,
                    None => shared::validate(&pipeline, &params)?,
                };
                schedules::create(client, name, &cron, &pipeline, local, output).await?
            }
            SchedulesCommand::Pause { name } => schedules::pause(client, name, output).await?,
            SchedulesCommand::Resume { name } => schedules::resume(client, name, output).await?,
            SchedulesCommand::Delete { name } => schedules::delete(client, name, output).await?,
        },
        Command::Secrets { command } => match command {
            SecretsCommand::Set {
                name,
                project,
                from_file,
                from_env,
            } => {
                let source = match (&from_file, &from_env) {
                    (Some(file), _) => secrets::Source::File(file),
                    (None, Some(var)) => secrets::Source::Env(var),
                    (None, None) => bail!("give the value with --from-file FILE or --from-env VAR"),
                };
                secrets::set(client, &name, &project, source, output).await?
            }
            SecretsCommand::List { project, read } => {
                secrets::list(client, project.as_deref(), read, output).await?
            }
            SecretsCommand::Delete { name, project } => {
                secrets::delete(client, &name, &project, output).await?
            }
            SecretsCommand::RotateKey => secrets::rotate_key(client, output).await?,
        },
        Command::Gc { keep_last, dry_run } => {
            gc::collect_garbage(client, keep_last, dry_run, output).await?
        }
        Command::Audit {
            since,
            user,
            project,
            limit,
        } => {
            let query = audit::AuditQuery {
                since,
                user,
                project,
                limit,
            };
            audit::list(client, query, output).await?
        }
        Command::Projects { command } => match command {
            ProjectsCommand::Create { name, owner } => {
                projects::create(client, name, owner, output).await?
            }
            ProjectsCommand::List { read } => projects::list(client, read, output).await?,
            ProjectsCommand::Members {
                command:
                    MembersCommand::Add {
                        project,
                        user,
                        role,
                    },
            } => projects::set_member(client, project, user, Some(role), output).await?,
            ProjectsCommand::Members {
                command: MembersCommand::Remove { project, user },
            } => projects::set_member(client, project, user, None, output).await?,
        },
        Command::Groups { command } => match command {
            GroupsCommand::List { read } => projects::list_groups(client, read, output).await?,
            GroupsCommand::Add { group, user } => {
                projects::set_group_member(client, group, user, true, output).await?
            }
            GroupsCommand::Remove { group, user } => {
                projects::set_group_member(client, group, user, false, output).await?
            }
            GroupsCommand::Delete { group } => {
                projects::delete_group(client, group, output).await?
            }
        },
        Command::Admins { command } => match command {
            AdminsCommand::List { read } => projects::list_admins(client, read, output).await?,
            AdminsCommand::Add { user } => projects::set_admin(client, user, true, output).await?,
            AdminsCommand::Remove { user } => {
                projects::set_admin(client, user, false, output).await?
            }
        },
        Command::Certs {
            command: CertsCommand::Revoke { target, name },
        } => certs::revoke(client, &target, name, output).await?,
        Command::Certs {
            command: CertsCommand::Revoked,
        } => certs::revoked(client, output).await?,
        Command::Certs { .. }
        | Command::Dev { .. }
        | Command::Bundle { .. }
        | Command::Ui { .. } => {
            unreachable!("handled before connecting")
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ferry").chain(args.iter().copied()))
    }

    #[test]
    fn the_coordinator_flag_takes_a_list_anywhere_on_the_line() {
        let cli = parse(&["runs", "--coordinator", "a:1,b:2"]).unwrap();
        assert_eq!(cli.connection.coordinator.as_deref(), Some("a:1,b:2"));
        let cli = parse(&["--coordinator", "a:1", "workers"]).unwrap();
        assert_eq!(cli.connection.coordinator.as_deref(), Some("a:1"));
    }

    #[test]
    fn stale_reads_are_asked_for_per_listing() {
        let stale = |args: &[&str]| match parse(args).unwrap().command {
            Command::Runs { read, .. }
            | Command::Status { read, .. }
            | Command::Workers { read, .. }
            | Command::Metrics { read, .. }
            | Command::Lineage { read, .. }
            | Command::Artifacts { read, .. } => read.stale,
            _ => panic!("not a listing"),
        };
        assert!(stale(&["runs", "--stale"]));
        assert!(!stale(&["runs"]));
        assert!(stale(&["status", "3", "--stale", "--attempts"]));
        assert!(stale(&["workers", "--stale"]));
        assert!(stale(&["artifacts", "3", "--stale"]));
        assert!(parse(&["watch", "3", "--stale"]).is_err());
        assert!(stale(&["lineage", &"a".repeat(64), "--stale"]));
    }

    #[test]
    fn run_and_rerun_take_their_flags() {
        match parse(&["run", "p.yaml", "--no-cache", "-p", "k=3", "--watch"])
            .unwrap()
            .command
        {
            Command::Run {
                no_cache,
                watch,
                params,
                ..
            } => assert!(no_cache && watch && params == ["k=3"]),
            _ => panic!("not run"),
        }
        match parse(&["rerun", "7", "--from", "train", "-w"])
            .unwrap()
            .command
        {
            Command::Rerun { run, from, watch } => {
                assert_eq!((run, from.as_deref(), watch), (7, Some("train"), true))
            }
            _ => panic!("not rerun"),
        }
        match parse(&["rerun", "7"]).unwrap().command {
            Command::Rerun { from, watch, .. } => assert!(from.is_none() && !watch),
            _ => panic!("not rerun"),
        }
    }

    #[test]
    fn runs_lists_filters_diffs_and_compares() {
        match parse(&["runs", "--where", "accuracy>0.9,seed=42", "--stale"])
            .unwrap()
            .command
        {
            Command::Runs {
                read,
                conditions,
                limit,
                command: None,
            } => {
                assert!(read.stale);
                assert_eq!(conditions.as_deref(), Some("accuracy>0.9,seed=42"));
                assert_eq!(limit, 100);
            }
            _ => panic!("not a runs listing"),
        }
        assert!(matches!(
            parse(&["runs", "--limit", "0"]).unwrap().command,
            Command::Runs { limit: 0, .. }
        ));
        assert!(parse(&["runs", "--limit", "-3"]).is_err());
        assert!(matches!(
            parse(&["runs", "diff", "3", "4", "--output", "json"])
                .unwrap()
                .command,
            Command::Runs {
                command: Some(RunsCommand::Diff { a: 3, b: 4, .. }),
                ..
            }
        ));
        assert!(parse(&["runs", "diff", "3"]).is_err());
        match parse(&[
            "runs", "compare", "1", "2", "3", "--metric", "loss", "--goal", "min",
        ])
        .unwrap()
        .command
        {
            Command::Runs {
                command:
                    Some(RunsCommand::Compare {
                        runs, metric, goal, ..
                    }),
                ..
            } => {
                assert_eq!(runs, [1, 2, 3]);
                assert_eq!((metric.as_deref(), goal), (Some("loss"), Goal::Min));
            }
            _ => panic!("not compare"),
        }
        match parse(&["runs", "compare", "1", "2"]).unwrap().command {
            Command::Runs {
                command: Some(RunsCommand::Compare { metric, goal, .. }),
                ..
            } => assert_eq!((metric, goal), (None, Goal::Max)),
            _ => panic!("not compare"),
        }
        assert!(parse(&["runs", "compare"]).is_err());
        assert!(parse(&["runs", "compare", "1", "--goal", "min"]).is_err());
        assert!(parse(&["runs", "compare", "1", "--metric", "a", "--goal", "up"]).is_err());
    }

    #[test]
    fn metrics_rank_by_a_metric_only_when_named() {
        match parse(&["metrics", "4", "--metric", "accuracy"])
            .unwrap()
            .command
        {
            Command::Metrics { metric, goal, .. } => {
                assert_eq!((metric.as_deref(), goal), (Some("accuracy"), Goal::Max))
            }
            _ => panic!("not metrics"),
        }
        assert!(parse(&["metrics", "4"]).is_ok());
        assert!(parse(&["metrics", "4", "--goal", "min"]).is_err());
    }

    #[test]
    fn schedules_gc_and_pins_parse() {
        match parse(&[
            "schedules",
            "create",
            "nightly",
            "--cron",
            "0 2 * * *",
            "--pipeline",
            "p.yaml",
            "--param",
            "k=5",
        ])
        .unwrap()
        .command
        {
            Command::Schedules {
                command:
                    SchedulesCommand::Create {
                        name,
                        cron,
                        pipeline,
                        params,
                    },
            } => {
                assert_eq!((name.as_str(), cron.as_str()), ("nightly", "0 2 * * *"));
                assert_eq!(pipeline, PathBuf::from("p.yaml"));
                assert_eq!(params, ["k=5"]);
            }
            _ => panic!("not schedules create"),
        }
        assert!(parse(&["schedules", "create", "n", "--pipeline", "p.yaml"]).is_err());
        for verb in ["pause", "resume", "delete"] {
            assert!(parse(&["schedules", verb, "nightly"]).is_ok(), "{verb}");
        }
        assert!(parse(&["schedules", "list", "--stale", "--output", "json"]).is_ok());
        assert!(parse(&["schedules"]).is_err());

        match parse(&["gc", "--keep-last", "0", "--dry-run"])
            .unwrap()
            .command
        {
            Command::Gc { keep_last, dry_run } => assert!(keep_last == 0 && dry_run),
            _ => panic!("not gc"),
        }
        assert!(parse(&["gc"]).is_err());
        assert!(parse(&["gc", "--keep-last", "-1"]).is_err());

        match parse(&["artifacts", "pin", "abc", "--tag", "best"])
            .unwrap()
            .command
        {
            Command::Artifacts {
                command: Some(ArtifactsCommand::Pin { digest, tag }),
                ..
            } => assert_eq!((digest.as_str(), tag.as_deref()), ("abc", Some("best"))),
            _ => panic!("not pin"),
        }
        assert!(matches!(
            parse(&["artifacts", "unpin", "best"]).unwrap().command,
            Command::Artifacts {
                command: Some(ArtifactsCommand::Unpin { .. }),
                ..
            }
        ));
        assert!(matches!(
            parse(&["artifacts", "pins", "--stale"]).unwrap().command,
            Command::Artifacts {
                command: Some(ArtifactsCommand::Pins { read }),
                ..
            } if read.stale
        ));
        // A run number still lists that run's artifacts.
        assert!(matches!(
            parse(&["artifacts", "5"]).unwrap().command,
            Command::Artifacts {
                run: Some(5),
                command: None,
                ..
            }
        ));
    }

    #[test]
    fn cluster_commands_parse_and_check_addresses() {
        let cli = parse(&[
            "cluster",
            "add-member",
            "--id",
            "4",
            "--client-address",
            "c4.example:7443",
        ])
        .unwrap();
        match cli.command {
            Command::Cluster {
                command:
                    ClusterCommand::AddMember {
                        id,
                        client_address,
                        peer_address,
                    },
            } => {
                assert_eq!((id, client_address.as_str()), (4, "c4.example:7443"));
                assert_eq!(peer_address, None);
            }
            _ => panic!("not add-member"),
        }
        assert!(
            parse(&[
                "cluster",
                "add-member",
                "--id",
                "4",
                "--client-address",
                "nohost"
            ])
            .is_err()
        );
        assert!(parse(&["cluster", "add-member", "--client-address", "a:1"]).is_err());
        assert!(parse(&["cluster", "remove-member", "--id", "2"]).is_ok());
        assert!(parse(&["cluster", "status", "--output", "json"]).is_ok());
    }
}
