//! Staging an attempt into its work directory: the code bundle (through the
//! worker's blob cache, checked against its digest, unpacked unless a pooled
//! directory already holds it), the input artifacts and the trials of any
//! gathered sweep (each through the cache, then hard-linked or copied into
//! place), every path the assignment names checked before anything is written;
//! and the environment that tells the step where all that is, who it is and
//! which GPUs it may use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_common::blobio::{Frame, FrameSink, FrameWriter};
use ferry_common::bundle::{BundleError, MAX_BUNDLE_BYTES};
use ferry_common::proto;
use ferry_common::spec::env_var_name;
use tokio::time::Instant;

use super::context::ExecutorContext;
use crate::blobcache::{CacheError, Placement, Source};
use crate::session::leader::{Agent, Coordinators};
use crate::workdirs::Fingerprint;

/// How long a blob's download keeps trying through coordinator failovers and
/// restarts before staging fails.
const FETCH_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub(super) enum StageError {
    #[error("{0}")]
    Io(String),
    #[error("cannot fetch blob {digest}: {status}")]
    Fetch {
        digest: String,
        status: tonic::Status,
    },
    #[error("blob {digest} arrived corrupted (its content hashes to {actual})")]
    Corrupt { digest: String, actual: String },
    #[error("the code bundle cannot be unpacked: {0}")]
    Bundle(String),
    /// A path the assignment names that is not a plain relative path, refused
    /// before anything is written there.
    #[error("{what} {path:?} {problem}; refused")]
    UnsafePath {
        what: &'static str,
        path: String,
        problem: &'static str,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cancelled")]
    Cancelled,
}

fn io_error(what: impl std::fmt::Display, error: std::io::Error) -> StageError {
    StageError::Io(format!("{what}: {error}"))
}

/// Where staging put an attempt's inputs and gathered sweeps; its environment
/// names them.
#[derive(Debug, Default)]
pub(super) struct Staged {
    /// Each input's file, by input name.
    inputs: Vec<(String, PathBuf)>,
    /// Each gathered sweep's directory, in the assignment's order.
    gathers: Vec<GatherDir>,
    /// The step's secrets, set once the step's user has its files; dropping
    /// them removes the attempt's secrets directory.
    pub(super) secrets: super::secrets::AttemptSecrets,
    /// Files hard-linked to the worker's blob cache: they stay the worker's
    /// (read-only), never handed to the step's user.
    pub(super) shared: Vec<PathBuf>,
}

/// What staging took from the blob cache and what it downloaded.
#[derive(Debug, Default)]
struct Tally {
    from_cache: u64,
    downloaded: u64,
    bytes_from_cache: u64,
    bytes_downloaded: u64,
    shared: Vec<PathBuf>,
}

/// Puts blobs into one attempt's work directory through the blob cache.
struct Stager<'ctx> {
    ctx: &'ctx ExecutorContext,
    /// Whether a file may be a hard link to the cache's read-only entry: only
    /// when the step runs as another user than the worker, and not as root.
    may_link: bool,
    tally: std::sync::Mutex<Tally>,
}

impl Stager<'_> {
    /// Puts blob `digest` at `path` (parent directories created), from the
    /// cache, fetching it into the cache first if need be.
    async fn blob(&self, digest: &str, path: &Path) -> Result<(), StageError> {
        let coordinators = &self.ctx.coordinators;
        let lease = self
            .ctx
            .blob_cache
            .get(digest, |download: PathBuf| async move {
                fetch_blob(coordinators, digest, &download).await
            })
            .await?;
        let (source, size) = (lease.source(), lease.size());
        let (dest, may_link) = (path.to_path_buf(), self.may_link);
        let placed = tokio::task::spawn_blocking(move || lease.place(&dest, may_link))
            .await
            .map_err(|e| StageError::Io(e.to_string()))?
            .map_err(|e| io_error(format!("cannot put blob {digest} at {}", path.display()), e))?;
        let mut tally = ferry_common::locks::lock(&self.tally, "staging tally");
        match source {
            Source::Cache => {
                tally.from_cache += 1;
                tally.bytes_from_cache += size;
            }
            Source::Downloaded => {
                tally.downloaded += 1;
                tally.bytes_downloaded += size;
            }
        }
        if placed == Placement::HardLinked {
            tally.shared.push(path.to_path_buf());
        }
        Ok(())
    }
}

/// One gathered sweep, staged under `<work dir>/gather/<step>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GatherDir {
    /// The sweep as written in the pipeline (`train`).
    step: String,
    /// Every trial's files at `<trial>/<output path>`, and `trials.json`.
    dir: PathBuf,
    /// `<dir>/<best trial>`, when a best trial was asked for and found.
    best: Option<PathBuf>,
}

/// What staging one gathered sweep writes, every path already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GatherPlan {
    dir: GatherDir,
    /// The digest of each trial's file and where it goes inside `dir`.
    files: Vec<(String, PathBuf)>,
    /// The text of `trials.json`, as the coordinator wrote it.
    manifest: String,
}

/// The file, in each gathered sweep's directory, that describes every trial.
const GATHER_MANIFEST: &str = "trials.json";

/// Stages into `work_dir`: unpacks the bundle unless the directory came from the
/// pool with it (`fingerprint` is then set; a fresh unpack sets it), then the
/// inputs at `inputs/<name>/<file name>` and the gathered sweeps at
/// `gather/<step>/`, each from the blob cache: a hard link to its read-only
/// entry where `may_link` (the step runs as another user than the worker, not
/// root), else a copy. A directory that received an input or a gathered file
/// loses its fingerprint and is never pooled.
pub(super) async fn stage(
    ctx: &ExecutorContext,
    assignment: &proto::Assignment,
    work_dir: &Path,
    fingerprint: &mut Option<Fingerprint>,
    may_link: bool,
) -> Result<Staged, StageError> {
    // Every gathered path is checked before anything is fetched, so that a bad
    // one fails the attempt at once.
    let gather_plans = plan_gathers(work_dir, &assignment.gathers)?;
    let began = Instant::now();
    let mut bundle = "pooled";
    if fingerprint.is_none() {
        bundle = match unpack_bundle(ctx, assignment, work_dir).await? {
            Source::Cache => "cache",
            Source::Downloaded => "downloaded",
        };
        let dir = work_dir.to_path_buf();
        *fingerprint = tokio::task::spawn_blocking(move || Fingerprint::of(&dir))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
    }
    if !(assignment.inputs.is_empty() && gather_plans.is_empty()) {
        *fingerprint = None;
    }
    let stager = Stager {
        ctx,
        may_link,
        tally: std::sync::Mutex::default(),
    };
    let mut staged = Staged::default();
    for input in &assignment.inputs {
        check_path_component("input", &input.name)?;
        if input.file_name.contains('/') || input.file_name == ".." || input.file_name.is_empty() {
            return Err(StageError::Io(format!(
                "input file name {:?} is not a plain file name",
                input.file_name
            )));
        }
        let path = work_dir
            .join("inputs")
            .join(&input.name)
            .join(&input.file_name);
        stager.blob(&input.digest, &path).await?;
        staged.inputs.push((input.name.clone(), path));
    }
    for plan in gather_plans {
        stage_gather(&plan, |digest, path| stager.blob(digest, path)).await?;
        staged.gathers.push(plan.dir);
    }
    let tally = stager.tally.into_inner().unwrap_or_else(|e| e.into_inner());
    tracing::info!(
        bundle,
        inputs_from_cache = tally.from_cache,
        inputs_downloaded = tally.downloaded,
        bytes_from_cache = tally.bytes_from_cache,
        bytes_downloaded = tally.bytes_downloaded,
        hard_linked = tally.shared.len(),
        staging_ms = began.elapsed().as_millis() as u64,
        "staged"
    );
    staged.shared = tally.shared;
    Ok(staged)
}

/// Where each gathered sweep goes: `<work dir>/gather/<step>`, each trial's file
/// at `<trial>/<output path>` inside it. Refuses a step, file name or best trial
/// that is not a plain relative path (it would land outside that directory), and
/// a file that would take the manifest's place.
fn plan_gathers(
    work_dir: &Path,
    gathers: &[proto::GatherInput],
) -> Result<Vec<GatherPlan>, StageError> {
    let mut plans = Vec::with_capacity(gathers.len());
    for gather in gathers {
        check_path_component("gathered step", &gather.step)?;
        let dir = work_dir.join("gather").join(&gather.step);
        let mut files = Vec::with_capacity(gather.files.len());
        for file in &gather.files {
            check_relative_path("gathered file", &file.name)?;
            if file.name.split('/').next() == Some(GATHER_MANIFEST) {
                return Err(StageError::UnsafePath {
                    what: "gathered file",
                    path: file.name.clone(),
                    problem: "would replace the sweep's trials.json",
                });
            }
            files.push((file.digest.clone(), dir.join(&file.name)));
        }
        let best = if gather.best_trial.is_empty() {
            None
        } else {
            check_path_component("best trial", &gather.best_trial)?;
            if gather.best_trial == GATHER_MANIFEST {
                return Err(StageError::UnsafePath {
                    what: "best trial",
                    path: gather.best_trial.clone(),
                    problem: "names the sweep's trials.json",
                });
            }
            Some(dir.join(&gather.best_trial))
        };
        plans.push(GatherPlan {
            dir: GatherDir {
                step: gather.step.clone(),
                dir,
                best,
            },
            files,
            manifest: gather.manifest_json.clone(),
        });
    }
    Ok(plans)
}

/// Writes one gathered sweep's directory: `trials.json`, the best trial's
/// directory (so that `FERRY_GATHER_<STEP>_BEST` names a directory even when that
/// trial wrote no file), and every trial's file through `fetch` (digest, path),
/// which creates the file's parent directories.
async fn stage_gather<'plan, Fetch, Fetched>(
    plan: &'plan GatherPlan,
    fetch: Fetch,
) -> Result<(), StageError>
where
    // Borrows for the plan's lifetime only (not for any lifetime, as an async
    // closure would), so that the attempt's future stays `Send`.
    Fetch: Fn(&'plan str, &'plan Path) -> Fetched,
    Fetched: std::future::Future<Output = Result<(), StageError>>,
{
    let dir = &plan.dir.dir;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io_error(format!("cannot create {}", dir.display()), e))?;
    let manifest = dir.join(GATHER_MANIFEST);
    tokio::fs::write(&manifest, &plan.manifest)
        .await
        .map_err(|e| io_error(format!("cannot write {}", manifest.display()), e))?;
    if let Some(best) = &plan.dir.best {
        tokio::fs::create_dir_all(best)
            .await
            .map_err(|e| io_error(format!("cannot create {}", best.display()), e))?;
    }
    for (digest, path) in &plan.files {
        fetch(digest, path).await?;
    }
    Ok(())
}

/// Checks that `path`, as the coordinator sent it, is relative and made of plain
/// components before it is joined onto a directory: `Path::join` with an absolute
/// path replaces the directory, and a `..` climbs out of it.
fn check_relative_path(what: &'static str, path: &str) -> Result<(), StageError> {
    let problem = if path.is_empty() {
        Some("is empty")
    } else if path.contains('\0') {
        Some("contains a NUL character")
    } else if path.starts_with('/') {
        Some("is absolute")
    } else if path.split('/').any(str::is_empty) {
        Some("has an empty component")
    } else if path.split('/').any(|part| part == "." || part == "..") {
        Some("has a '.' or '..' component")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(StageError::UnsafePath {
            what,
            path: path.to_string(),
            problem,
        }),
        None => Ok(()),
    }
}

/// Like [`check_relative_path`], for a single directory or file name.
fn check_path_component(what: &'static str, name: &str) -> Result<(), StageError> {
    check_relative_path(what, name)?;
    if name.contains('/') {
        return Err(StageError::UnsafePath {
            what,
            path: name.to_string(),
            problem: "is not a single name (it contains '/')",
        });
    }
    Ok(())
}

/// Creates `work_dir` with the assignment's code bundle unpacked in it: the
/// bundle comes from the worker's blob cache, fetched into it (at most
/// [`MAX_BUNDLE_BYTES`]) if need be, and is streamed from the cache's file
/// through gunzip and tar into the directory, hashed on the way and checked
/// against the worker's limits (`max_unpacked_bundle_bytes`,
/// `max_bundle_entries`) before each entry is written; it is never held whole in
/// memory. On any failure the caller removes the directory, so that nothing of a
/// refused or damaged bundle stays on disk; a bundle whose bytes no longer match
/// its digest, or that this worker refuses, leaves the cache too (the next
/// attempt fetches it again). Says whether the bundle came from the cache.
async fn unpack_bundle(
    ctx: &ExecutorContext,
    assignment: &proto::Assignment,
    work_dir: &Path,
) -> Result<Source, StageError> {
    tokio::fs::create_dir_all(work_dir)
        .await
        .map_err(|e| io_error(format!("cannot create {}", work_dir.display()), e))?;
    let digest = assignment.bundle_digest.as_str();
    let coordinators = &ctx.coordinators;
    let lease = ctx
        .blob_cache
        .get(digest, |download: PathBuf| async move {
            fetch_blob_within(coordinators, digest, &download, Some(MAX_BUNDLE_BYTES)).await
        })
        .await?;
    let source = lease.source();
    let dest = work_dir.to_path_buf();
    let digest = digest.to_string();
    let limits = ctx.bundle_limits;
    // When the attempt is cancelled this future is dropped, but the unpacking
    // thread is not: the guard tells it to stop at its next read, and it then
    // removes what it wrote (the attempt's own removal of the directory may have
    // raced with its last writes). The thread holds the lease, so that the
    // cache keeps the bundle's file until it is done.
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let stopped = stop.0.clone();
    let (unpacked, lease) = tokio::task::spawn_blocking(move || {
        let file = lease.path().to_path_buf();
        let unpacked = std::fs::File::open(&file)
            .map_err(|e| BundleError::Io {
                path: file,
                source: e,
            })
            .and_then(|f| {
                let reader = Stoppable {
                    inner: std::io::BufReader::with_capacity(256 * 1024, f),
                    stop: &stopped,
                };
                ferry_common::bundle::unpack_verified(reader, &digest, &dest, limits)
            });
        if stopped.load(Ordering::Relaxed) {
            let _ = std::fs::remove_dir_all(&dest);
        }
        (unpacked, lease)
    })
    .await
    .map_err(|e| StageError::Bundle(e.to_string()))?;
    drop(stop);
    let error = match unpacked {
        Ok(_) => return Ok(source),
        Err(BundleError::DigestMismatch { expected, actual }) => StageError::Corrupt {
            digest: expected,
            actual,
        },
        Err(error @ BundleError::Io { .. }) => return Err(StageError::Bundle(error.to_string())),
        Err(error @ BundleError::UnpacksTooLarge { .. }) => StageError::Bundle(format!(
            "{error} (max_unpacked_bundle_bytes in worker.toml)"
        )),
        Err(error @ BundleError::TooManyEntries { .. }) => {
            StageError::Bundle(format!("{error} (max_bundle_entries in worker.toml)"))
        }
        Err(error) => StageError::Bundle(error.to_string()),
    };
    // A damaged file is fetched again next time; a bundle this worker refuses
    // would only be refused again, and is not kept either.
    lease.discard();
    Err(error)
}

/// Removes a file when dropped (nothing once it has been renamed away).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A reader that fails once its flag is set.
struct Stoppable<'flag, R> {
    inner: R,
    stop: &'flag AtomicBool,
}

impl<R: std::io::Read> std::io::Read for Stoppable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stop.load(Ordering::Relaxed) {
            // Not `Interrupted`, which readers retry.
            return Err(std::io::Error::other("the attempt was cancelled"));
        }
        self.inner.read(buf)
    }
}

/// Downloads a blob to `path`, hashing it on the way; only a verified blob is
/// renamed into place. A download cut off by a failover starts again on the
/// coordinator switched to.
async fn fetch_blob(
    coordinators: &Coordinators,
    digest: &str,
    path: &Path,
) -> Result<(), StageError> {
    fetch_blob_within(coordinators, digest, path, None).await
}

/// [`fetch_blob`], refusing a blob larger than `max_bytes` (if given) as soon as
/// its announced size or the bytes received pass it.
async fn fetch_blob_within(
    coordinators: &Coordinators,
    digest: &str,
    path: &Path,
    max_bytes: Option<u64>,
) -> Result<(), StageError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(|e| io_error(format!("cannot create {}", parent.display()), e))?;
    // A name of its own per download: attempts started together may fetch the same
    // bundle at once, and each must write its own file before the atomic rename.
    static DOWNLOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let number = DOWNLOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = path.with_file_name(format!(
        ".{file_name}.partial-{}-{number}",
        std::process::id()
    ));
    // Removed however the download ends, a cancelled attempt's included (this
    // future is then dropped).
    let _partial_guard = RemoveOnDrop(partial.clone());
    let give_up = Instant::now() + FETCH_PATIENCE;
    loop {
        let coordinator = coordinators.current();
        let downloaded = download_blob(&coordinator.agent, digest, &partial, max_bytes).await;
        if downloaded.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        match downloaded {
            Ok(()) => {
                coordinators.answered(coordinator.generation);
                break;
            }
            Err(StageError::Fetch { digest, status }) => {
                match coordinators.retry_after(coordinator.generation, &status, Some(give_up)) {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => return Err(StageError::Fetch { digest, status }),
                }
            }
            Err(error) => return Err(error),
        }
    }
    tokio::fs::rename(&partial, path)
        .await
        .map_err(|e| io_error(format!("cannot move {} into place", path.display()), e))
}

/// One try at downloading a blob into `partial`, verified against its digest:
/// from the bucket with a presigned URL when the store is one, else over
/// `FetchBlob`.
async fn download_blob(
    agent: &Agent,
    digest: &str,
    partial: &Path,
    max_bytes: Option<u64>,
) -> Result<(), StageError> {
    // Straight from the bucket when the store is one (`direct`).
    match super::direct::download(agent, digest, partial, max_bytes).await {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(error) => return Err(direct_error(digest, error)),
    }
    let fetch = |status| StageError::Fetch {
        digest: digest.to_string(),
        status,
    };
    let mut stream = agent
        .clone()
        .fetch_blob(proto::BlobRef {
            digest: digest.to_string(),
            size: 0,
        })
        .await
        .map_err(fetch)?
        .into_inner();
    let file = std::fs::File::create(partial)
        .map_err(|e| io_error(format!("cannot create {}", partial.display()), e))?;
    // Hashed on one thread and written on another (zero runs, holes and
    // zero-filled stretches, as holes) while the next chunks arrive.
    let mut sink = FrameSink::start(blake3::Hasher::new(), Some(FrameWriter::new(file)));
    let mut received = 0u64;
    let mut announced: Option<u64> = None;
    let write_error = |e| io_error(format!("cannot write {}", partial.display()), e);
    while let Some(chunk) = stream.message().await.map_err(fetch)? {
        received = received
            .saturating_add(chunk.data.len() as u64)
            .saturating_add(chunk.zeros);
        if announced.is_none() {
            announced = Some(chunk.size);
        }
        if received > announced.unwrap_or(0) {
            return Err(StageError::Io(format!(
                "blob {digest} arrived longer than the {} bytes announced",
                announced.unwrap_or(0)
            )));
        }
        if let Some(limit) = max_bytes
            && (chunk.size > limit || received > limit)
        {
            return Err(StageError::Bundle(format!(
                "blob {digest} is larger than the limit of {} for a code bundle",
                ferry_common::spec::format_bytes(limit)
            )));
        }
        for frame in Frame::from_chunk(chunk) {
            sink.push(frame).await.map_err(write_error)?;
        }
    }
    let (hasher, writer) = sink.finish().await.map_err(write_error)?;
    if let Some(writer) = writer {
        writer.finish().map_err(write_error)?;
    }
    let actual = hasher.finalize().to_hex().to_string();
    if actual != digest {
        return Err(StageError::Corrupt {
            digest: digest.to_string(),
            actual,
        });
    }
    Ok(())
}

/// A direct download's failure as staging tells it.
fn direct_error(digest: &str, error: super::direct::DownloadError) -> StageError {
    use super::direct::DownloadError;
    let digest = digest.to_string();
    match error {
        DownloadError::Fetch(status) => StageError::Fetch { digest, status },
        DownloadError::Corrupt { actual } => StageError::Corrupt { digest, actual },
        DownloadError::TooLarge { limit } => StageError::Bundle(format!(
            "blob {digest} is larger than the limit of {} for a code bundle",
            ferry_common::spec::format_bytes(limit)
        )),
        DownloadError::Io(message) => StageError::Io(message),
    }
}

/// The environment a step sees beyond the worker's own: its parameters and env,
/// where its inputs and gathered sweeps are, who it is, and exactly which of the
/// worker's `gpus` it may use.
pub(super) fn step_environment(
    gpus: &[proto::Gpu],
    assignment: &proto::Assignment,
    work_dir: &Path,
    staged: &Staged,
) -> HashMap<String, String> {
    let attempt = assignment.attempt.clone().unwrap_or_default();
    let mut env: HashMap<String, String> = assignment.env.clone().into_iter().collect();
    env.insert("FERRY_RUN_ID".into(), attempt.run_id.to_string());
    env.insert("FERRY_STEP".into(), attempt.step.clone());
    env.insert("FERRY_ATTEMPT".into(), attempt.attempt.to_string());
    env.insert("FERRY_PIPELINE".into(), assignment.pipeline.clone());
    env.insert("FERRY_WORK_DIR".into(), work_dir.display().to_string());
    for (name, path) in &staged.inputs {
        env.insert(
            env_var_name("FERRY_INPUT_", name),
            path.display().to_string(),
        );
    }
    for gather in &staged.gathers {
        let name = env_var_name("FERRY_GATHER_", &gather.step);
        if let Some(best) = &gather.best {
            env.insert(format!("{name}_BEST"), best.display().to_string());
        }
        env.insert(name, gather.dir.display().to_string());
    }
    let (devices, uuids) = gpu_names(&assignment.gpu_indices, gpus);
    // CUDA numbers devices fastest first unless told the PCI bus order (the
    // order of NVML's indices): a device named by index is then the one meant.
    env.insert("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into());
    env.insert("CUDA_VISIBLE_DEVICES".into(), devices.join(","));
    env.insert(
        "NVIDIA_VISIBLE_DEVICES".into(),
        if devices.is_empty() {
            "void".into()
        } else {
            devices.join(",")
        },
    );
    env.insert("FERRY_GPUS".into(), uuids.join(","));
    env
}

/// How a step names its GPUs: each by its hardware UUID (`GPU-…` or `MIG-…`,
/// which CUDA and the NVIDIA container runtime take in place of an index, so
/// no numbering can select another device), or by its NVML index where the
/// worker knows no real UUID (an inventory without one). Also every GPU's
/// UUID as Ferry knows it, for `FERRY_GPUS`.
pub(super) fn gpu_names(assigned: &[u32], gpus: &[proto::Gpu]) -> (Vec<String>, Vec<String>) {
    assigned
        .iter()
        .map(|index| {
            let uuid = gpus
                .iter()
                .find(|gpu| gpu.index == *index)
                .map(|gpu| gpu.uuid.clone())
                .unwrap_or_default();
            let device = if is_hardware_uuid(&uuid) {
                uuid.clone()
            } else {
                index.to_string()
            };
            (device, uuid)
        })
        .unzip()
}

/// `GPU-` or `MIG-` and a UUID: 32 hex digits, with dashes.
fn is_hardware_uuid(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("GPU-")
        .or_else(|| name.strip_prefix("MIG-"))
    else {
        return false;
    };
    rest.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        && rest.chars().filter(char::is_ascii_hexdigit).count() == 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_are_named_by_uuid_where_one_is_known_else_by_pci_index() {
        let gpu = |index, uuid: &str| proto::Gpu {
            index,
            uuid: uuid.into(),
            model: "H100".into(),
            memory_bytes: 1,
        };
        let real = "GPU-5a1c0f3e-9b2d-4c7e-8f10-2b3c4d5e6f70";
        let mig = "MIG-0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6";
        let gpus = [gpu(0, "GPU-w1-0"), gpu(1, real), gpu(2, mig)];
        let (devices, uuids) = gpu_names(&[1, 0, 2], &gpus);
        assert_eq!(devices, [real, "0", mig]);
        assert_eq!(uuids, [real, "GPU-w1-0", mig]);
        assert_eq!(gpu_names(&[], &gpus), (Vec::new(), Vec::new()));
        assert!(!is_hardware_uuid("GPU-5a1c0f3e"));
        assert!(!is_hardware_uuid("5a1c0f3e-9b2d-4c7e-8f10-2b3c4d5e6f70"));
    }
    use crate::workdirs::WorkDirs;

    fn gather_input(step: &str, names: &[&str], best_trial: &str) -> proto::GatherInput {
        proto::GatherInput {
            step: step.to_string(),
            files: names
                .iter()
                .map(|name| proto::InputFile {
                    name: name.to_string(),
                    file_name: name.rsplit('/').next().unwrap().to_string(),
                    digest: format!("digest of {name}"),
                    size: 1,
                })
                .collect(),
            manifest_json: "{\"trials\": []}".to_string(),
            best_trial: best_trial.to_string(),
        }
    }

    #[test]
    fn gathered_paths_must_be_plain_relative_paths() {
        for good in [
            "train.3/model.json",
            "train.3/out/deep/model.json",
            "a",
            "a.b/..c",
        ] {
            assert!(check_relative_path("gathered file", good).is_ok(), "{good}");
        }
        let refused = [
            ("", "is empty"),
            ("/etc/passwd", "is absolute"),
            ("train.3//model.json", "empty component"),
            ("train.3/", "empty component"),
            ("train.3/../../escape", "'..' component"),
            ("..", "'..' component"),
            ("./model.json", "'.' or '..' component"),
            ("train.3/mo\0del", "NUL"),
        ];
        for (bad, problem) in refused {
            let error = check_relative_path("gathered file", bad)
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with(&format!("gathered file {bad:?} ")) && error.contains(problem),
                "{bad:?}: {error}"
            );
        }
        assert!(check_path_component("gathered step", "train").is_ok());
        let nested = check_path_component("gathered step", "train/x").unwrap_err();
        assert!(nested.to_string().contains("single name"), "{nested}");
        assert!(check_path_component("best trial", "..").is_err());

        // Each field of a gather is checked, and the error names the bad value.
        let work = Path::new("/data/work/1");
        let cases = [
            (
                gather_input("../train", &[], ""),
                "gathered step \"../train\"",
            ),
            (gather_input("/train", &[], ""), "gathered step \"/train\""),
            (gather_input("", &[], ""), "gathered step \"\""),
            (
                gather_input("train", &["train.0/a", "/abs/model.json"], ""),
                "gathered file \"/abs/model.json\"",
            ),
            (
                gather_input("train", &["train.0/../../../x"], ""),
                "gathered file \"train.0/../../../x\"",
            ),
            (
                gather_input("train", &["trials.json"], ""),
                "would replace the sweep's trials.json",
            ),
            (gather_input("train", &[], "../.."), "best trial \"../..\""),
            (
                gather_input("train", &[], "train.0/x"),
                "best trial \"train.0/x\"",
            ),
        ];
        for (gather, expected) in cases {
            let error = plan_gathers(work, &[gather]).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[tokio::test]
    async fn a_gathered_sweep_is_staged_under_the_work_directory_and_named_in_the_environment() {
        let root = tempfile::tempdir().unwrap();
        let work_dirs = WorkDirs::open(root.path().join("work")).unwrap();
        let work_dir = work_dirs.fresh();
        std::fs::create_dir_all(&work_dir).unwrap();
        std::fs::write(work_dir.join("evaluate.py"), "print(1)\n").unwrap();
        let fingerprint = Fingerprint::of(&work_dir).unwrap().unwrap();

        let assignment = proto::Assignment {
            gathers: vec![
                gather_input(
                    "train",
                    &[
                        "train.0/model.json",
                        "train.1/model.json",
                        "train.1/plots/loss.png",
                    ],
                    "train.1",
                ),
                gather_input("tune-lr", &["tune-lr.0/lr.txt"], ""),
            ],
            ..Default::default()
        };
        let plans = plan_gathers(&work_dir, &assignment.gathers).unwrap();
        // Blobs served from memory by digest, written the way `fetch_blob` writes
        // them (parent directories created); the real fetch needs a coordinator.
        let fetched = std::sync::Mutex::new(Vec::new());
        let mut staged = Staged::default();
        for plan in plans {
            stage_gather(&plan, |digest, path| {
                fetched.lock().unwrap().push(digest.to_string());
                async move {
                    tokio::fs::create_dir_all(path.parent().unwrap())
                        .await
                        .unwrap();
                    tokio::fs::write(path, digest).await.unwrap();
                    Ok(())
                }
            })
            .await
            .unwrap();
            staged.gathers.push(plan.dir);
        }
        assert_eq!(fetched.into_inner().unwrap().len(), 4);

        let train = work_dir.join("gather/train");
        for name in [
            "train.0/model.json",
            "train.1/model.json",
            "train.1/plots/loss.png",
        ] {
            let text = std::fs::read_to_string(train.join(name)).unwrap();
            assert_eq!(text, format!("digest of {name}"));
        }
        assert_eq!(
            std::fs::read_to_string(train.join("trials.json")).unwrap(),
            "{\"trials\": []}"
        );
        let tune = work_dir.join("gather/tune-lr");
        assert!(tune.join("tune-lr.0/lr.txt").is_file());
        assert!(tune.join("trials.json").is_file());

        let env = step_environment(&[], &assignment, &work_dir, &staged);
        assert_eq!(env["FERRY_GATHER_TRAIN"], train.display().to_string());
        assert_eq!(
            env["FERRY_GATHER_TRAIN_BEST"],
            train.join("train.1").display().to_string()
        );
        assert_eq!(env["FERRY_GATHER_TUNE_LR"], tune.display().to_string());
        assert!(!env.contains_key("FERRY_GATHER_TUNE_LR_BEST"));

        // Like staged inputs, gathered files change the directory after its
        // fingerprint was taken, so it is removed rather than pooled for reuse.
        assert_eq!(
            work_dirs.pool("bundle", work_dir.clone(), Some(fingerprint)),
            Some(work_dir)
        );
    }

    #[tokio::test]
    async fn the_best_trial_directory_exists_even_without_files() {
        let root = tempfile::tempdir().unwrap();
        let plans = plan_gathers(root.path(), &[gather_input("train", &[], "train.2")]).unwrap();
        stage_gather(&plans[0], |_, _| async { Ok(()) })
            .await
            .unwrap();
        assert!(root.path().join("gather/train/train.2").is_dir());
    }
}
