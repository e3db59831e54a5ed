//! A blob's bytes between a file and the wire, in frames: data frames of up to
//! [`FRAME_BYTES`], and zero runs that stand for that many zero bytes. A
//! [`FrameReader`] never reads a file's holes (it asks the filesystem where
//! the data is) and turns a data frame that is all zeros into a zero run, so a
//! sparse file or one full of zeros costs a few bytes on the wire; a
//! [`FrameWriter`] writes zero runs as holes. Every reader of a blob hashes the
//! zeros too ([`Frame::hash_into`]): a zero run is a way of sending bytes, not
//! of leaving them out of the digest.
//!
//! On the wire a [`proto::Chunk`] carries its `data` followed by `zeros` zero
//! bytes; older senders never set `zeros`.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use bytes::Bytes;

use crate::proto;

/// The most bytes one data frame carries (and one chunk of a blob on the wire).
pub const FRAME_BYTES: usize = 1 << 20;

/// The most bytes handed to one `write(2)`: on the development VM a 1 MiB
/// write into the page cache and its later fsync cost four times what 128 KiB
/// writes do (`dd bs=1M` + fsync of 1 GiB: 2.9–3.6 s; `bs=128K`: 0.8–0.9 s).
pub const WRITE_BYTES: usize = 128 * 1024;

/// Zeros to hash from, without allocating.
static ZEROS: [u8; FRAME_BYTES] = [0; FRAME_BYTES];

/// A piece of a blob, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data(Bytes),
    /// This many zero bytes.
    Zeros(u64),
}

impl Frame {
    /// How many bytes of the blob the frame stands for.
    pub fn len(&self) -> u64 {
        match self {
            Frame::Data(data) => data.len() as u64,
            Frame::Zeros(count) => *count,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds the bytes the frame stands for to `hasher`.
    pub fn hash_into(&self, hasher: &mut blake3::Hasher) {
        match self {
            Frame::Data(data) => hash_bytes(hasher, data),
            Frame::Zeros(count) => hash_zeros(hasher, *count),
        }
    }

    /// The frame as a chunk on the wire (no digest or size: those are the
    /// first chunk's).
    pub fn into_chunk(self) -> proto::Chunk {
        match self {
            Frame::Data(data) => proto::Chunk {
                data,
                ..Default::default()
            },
            Frame::Zeros(zeros) => proto::Chunk {
                zeros,
                ..Default::default()
            },
        }
    }

    /// The frames a chunk on the wire carries: its data, then its zeros (either
    /// may be empty).
    pub fn from_chunk(chunk: proto::Chunk) -> impl Iterator<Item = Frame> {
        let data = (!chunk.data.is_empty()).then_some(Frame::Data(chunk.data));
        let zeros = (chunk.zeros > 0).then_some(Frame::Zeros(chunk.zeros));
        data.into_iter().chain(zeros)
    }

    /// The frame's bytes, a zero run made real in pieces of at most
    /// [`FRAME_BYTES`] (for a store that cannot keep holes).
    pub fn into_bytes(self) -> impl Iterator<Item = Bytes> {
        let (data, zeros) = match self {
            Frame::Data(data) => (Some(data), 0),
            Frame::Zeros(count) => (None, count),
        };
        let pieces = zeros.div_ceil(FRAME_BYTES as u64);
        data.into_iter().chain((0..pieces).map(move |piece| {
            let start = piece * FRAME_BYTES as u64;
            let len = (zeros - start).min(FRAME_BYTES as u64) as usize;
            Bytes::from_static(&ZEROS[..len])
        }))
    }
}

/// Adds `bytes` to `hasher`, on every core for a large piece (BLAKE3 hashes
/// the subtrees of a piece independently).
pub fn hash_bytes(hasher: &mut blake3::Hasher, bytes: &[u8]) {
    if bytes.len() >= PARALLEL_HASH_BYTES {
        hasher.update_rayon(bytes);
    } else {
        hasher.update(bytes);
    }
}

/// The smallest piece worth hashing on several threads (blake3's advice:
/// 128 KiB).
const PARALLEL_HASH_BYTES: usize = 128 * 1024;

/// Adds `count` zero bytes to `hasher`.
pub fn hash_zeros(hasher: &mut blake3::Hasher, mut count: u64) {
    while count > 0 {
        let piece = count.min(FRAME_BYTES as u64) as usize;
        hash_bytes(hasher, &ZEROS[..piece]);
        count -= piece as u64;
    }
}

/// Whether every byte is zero (vectorizes: no early exit inside a block).
pub fn is_all_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Reads a file as [`Frame`]s from an offset to its end (its size when
/// opened). Positioned reads only: the file's own offset is not used.
#[derive(Debug)]
pub struct FrameReader {
    file: File,
    offset: u64,
    size: u64,
    /// The end of the data extent `offset` is in, once asked.
    data_end: u64,
    /// Whether the filesystem answers `SEEK_DATA`/`SEEK_HOLE`.
    finds_holes: bool,
}

impl FrameReader {
    /// Reads `file` from its start; its size is taken now. Only a file with
    /// fewer blocks than its size has holes to look for: a dense file is read
    /// without asking the filesystem where its data is (so a filesystem whose
    /// `SEEK_DATA` is wrong cannot make data look like a hole there).
    pub fn new(file: File) -> io::Result<FrameReader> {
        use std::os::unix::fs::MetadataExt;
        let metadata = file.metadata()?;
        let size = metadata.len();
        Ok(FrameReader {
            file,
            offset: 0,
            size,
            data_end: 0,
            finds_holes: metadata.blocks().saturating_mul(512) < size,
        })
    }

    /// Starts at `offset` instead (at most the size).
    pub fn from_offset(mut self, offset: u64) -> FrameReader {
        self.offset = offset.min(self.size);
        self
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The next frame, `None` at the end. A file that shrank while it was read
    /// is an error (`UnexpectedEof`).
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.offset >= self.size {
            return Ok(None);
        }
        if self.finds_holes && self.offset >= self.data_end {
            match self.seek_to(nix::unistd::Whence::SeekData) {
                Ok(data) if data > self.offset => {
                    let zeros = data.min(self.size) - self.offset;
                    self.offset += zeros;
                    return Ok(Some(Frame::Zeros(zeros)));
                }
                Ok(_) => {
                    self.data_end = self
                        .seek_to(nix::unistd::Whence::SeekHole)
                        .unwrap_or(self.size)
                        .min(self.size);
                }
                // No data after the offset: the rest is a hole, unless the
                // file shrank.
                Err(nix::errno::Errno::ENXIO) => {
                    if self.file.metadata()?.len() < self.size {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the file shrank while it was read",
                        ));
                    }
                    let zeros = self.size - self.offset;
                    self.offset = self.size;
                    return Ok(Some(Frame::Zeros(zeros)));
                }
                Err(_) => self.finds_holes = false,
            }
        }
        if !self.finds_holes {
            self.data_end = self.size;
        }
        // A filesystem may report data ending at the offset (a racing write):
        // then read a whole frame.
        if self.data_end <= self.offset {
            self.data_end = self.offset + FRAME_BYTES as u64;
        }
        let end = self.data_end.min(self.size);
        let len = (end - self.offset).min(FRAME_BYTES as u64) as usize;
        let mut buffer = vec![0u8; len];
        self.file.read_exact_at(&mut buffer, self.offset)?;
        self.offset += len as u64;
        Ok(Some(if is_all_zero(&buffer) {
            Frame::Zeros(len as u64)
        } else {
            Frame::Data(Bytes::from(buffer))
        }))
    }

    fn seek_to(&self, whence: nix::unistd::Whence) -> nix::Result<u64> {
        let offset = i64::try_from(self.offset).map_err(|_| nix::errno::Errno::EOVERFLOW)?;
        nix::unistd::lseek(&self.file, offset, whence).map(|at| at as u64)
    }
}

impl Iterator for FrameReader {
    type Item = io::Result<Frame>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame().transpose()
    }
}

/// Writes [`Frame`]s to a file in order, zero runs as holes.
#[derive(Debug)]
pub struct FrameWriter {
    file: File,
    written: u64,
    /// With early writeback: where the data not yet handed to writeback
    /// starts.
    writeback_from: Option<u64>,
}

/// How much written data an early-writeback writer gathers before it asks
/// the kernel to start writing it out.
const WRITEBACK_BYTES: u64 = 8 << 20;

impl FrameWriter {
    /// Writes from the file's start.
    pub fn new(file: File) -> FrameWriter {
        FrameWriter {
            file,
            written: 0,
            writeback_from: None,
        }
    }

    /// Asks the kernel to start writing the data out every few MiB
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait), so
    /// that the disk works while more arrives and the final fsync has little
    /// left to do. Not a durability step: the file must still be synced.
    pub fn with_early_writeback(mut self) -> FrameWriter {
        self.writeback_from = Some(self.written);
        self
    }

    /// Writes after the first `offset` bytes already in the file (a resumed
    /// download); whatever follows them is cut off.
    pub fn resuming(mut file: File, offset: u64) -> io::Result<FrameWriter> {
        file.set_len(offset)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(FrameWriter {
            file,
            written: offset,
            writeback_from: None,
        })
    }

    /// Bytes the file holds so far (zero runs included).
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn write(&mut self, frame: &Frame) -> io::Result<()> {
        match frame {
            Frame::Data(data) => {
                for piece in data.chunks(WRITE_BYTES) {
                    self.file.write_all(piece)?;
                }
            }
            Frame::Zeros(count) => {
                let count = i64::try_from(*count)
                    .map_err(|_| io::Error::other("a zero run longer than a file can be"))?;
                self.file.seek(SeekFrom::Current(count))?;
            }
        }
        self.written += frame.len();
        if let Some(from) = self.writeback_from
            && self.written - from >= WRITEBACK_BYTES
        {
            start_writeback(&self.file, from, self.written - from);
            self.writeback_from = Some(self.written);
        }
        Ok(())
    }

    /// Sets the file's length (a trailing zero run is a hole, not yet part of
    /// the file) and gives the file back, not yet synced.
    pub fn finish(self) -> io::Result<File> {
        self.file.set_len(self.written)?;
        Ok(self.file)
    }
}

/// Starts writing `len` bytes of `file` from `offset` out to the disk without
/// waiting for it; a failure only means the final sync does all the work.
/// (Not in `nix`; `libc` only.)
#[allow(unsafe_code)]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for as long as `file` is borrowed, and
    // the call only reads its arguments.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Frames queued for each thread of a [`FrameSink`].
pub const QUEUED_FRAMES: usize = 4;

/// Where the frames of a blob being received go: hashed on one blocking
/// thread and written (when there is a writer) on another, each fed through
/// a queue of [`QUEUED_FRAMES`], so that the network, the hash and the disk
/// work at once. Dropped unfinished, its threads stop after the frames
/// already queued.
#[derive(Debug)]
pub struct FrameSink {
    hash_lane: tokio::sync::mpsc::Sender<Frame>,
    hashing: tokio::task::JoinHandle<blake3::Hasher>,
    write_lane: Option<tokio::sync::mpsc::Sender<Frame>>,
    writing: Option<tokio::task::JoinHandle<io::Result<FrameWriter>>>,
    /// The writer failed: every later frame is refused.
    broken: bool,
}

impl FrameSink {
    /// Starts the threads (inside a tokio runtime): `hasher` continues from
    /// what it has hashed, `writer` (if any) from what it has written.
    pub fn start(mut hasher: blake3::Hasher, writer: Option<FrameWriter>) -> FrameSink {
        let (hash_lane, mut to_hash) = tokio::sync::mpsc::channel::<Frame>(QUEUED_FRAMES);
        let hashing = tokio::task::spawn_blocking(move || {
            while let Some(frame) = to_hash.blocking_recv() {
                frame.hash_into(&mut hasher);
            }
            hasher
        });
        let (write_lane, writing) = match writer {
            Some(mut writer) => {
                let (lane, mut to_write) = tokio::sync::mpsc::channel::<Frame>(QUEUED_FRAMES);
                let writing = tokio::task::spawn_blocking(move || {
                    while let Some(frame) = to_write.blocking_recv() {
                        writer.write(&frame)?;
                    }
                    Ok(writer)
                });
                (Some(lane), Some(writing))
            }
            None => (None, None),
        };
        FrameSink {
            hash_lane,
            hashing,
            write_lane,
            writing,
            broken: false,
        }
    }

    /// Queues the next frame for both threads (waiting while a queue is
    /// full); an error when the writer failed.
    pub async fn push(&mut self, frame: Frame) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other("the writer failed earlier"));
        }
        if let Some(lane) = &self.write_lane
            && lane.send(frame.clone()).await.is_err()
        {
            // The writer stopped: its error says why.
            self.write_lane = None;
            self.broken = true;
            return Err(match self.writing.take() {
                Some(writing) => match writing.await {
                    Ok(Err(error)) => error,
                    Ok(Ok(_)) => io::Error::other("the writer stopped early"),
                    Err(error) => io::Error::other(error),
                },
                None => io::Error::other("the writer stopped early"),
            });
        }
        if self.hash_lane.send(frame).await.is_err() {
            return Err(io::Error::other("the hashing thread stopped"));
        }
        Ok(())
    }

    /// Waits for both threads to take every frame queued; gives back the
    /// hasher and the writer (not yet finished or synced).
    pub async fn finish(self) -> io::Result<(blake3::Hasher, Option<FrameWriter>)> {
        let FrameSink {
            hash_lane,
            hashing,
            write_lane,
            writing,
            broken,
        } = self;
        if broken {
            return Err(io::Error::other("the writer failed earlier"));
        }
        drop(hash_lane);
        drop(write_lane);
        let writer = match writing {
            Some(writing) => Some(writing.await.map_err(io::Error::other)??),
            None => None,
        };
        let hasher = hashing.await.map_err(io::Error::other)?;
        Ok((hasher, writer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames_of(path: &std::path::Path) -> Vec<Frame> {
        FrameReader::new(File::open(path).unwrap())
            .unwrap()
            .collect::<io::Result<Vec<_>>>()
            .unwrap()
    }

    fn copy_through_frames(from: &std::path::Path, to: &std::path::Path) -> Vec<Frame> {
        let frames = frames_of(from);
        let mut writer = FrameWriter::new(File::create(to).unwrap());
        for frame in &frames {
            writer.write(frame).unwrap();
        }
        writer.finish().unwrap();
        frames
    }

    fn digest_of(frames: &[Frame]) -> String {
        let mut hasher = blake3::Hasher::new();
        for frame in frames {
            frame.hash_into(&mut hasher);
        }
        hasher.finalize().to_hex().to_string()
    }

    #[test]
    fn a_sparse_file_travels_as_zero_runs_and_lands_sparse() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("sparse");
        let size = 64 * FRAME_BYTES as u64;
        let file = File::create(&from).unwrap();
        file.set_len(size).unwrap();
        file.write_all_at(b"middle", size / 2).unwrap();
        file.write_all_at(b"end", size - 3).unwrap();
        drop(file);
        let to = dir.path().join("copy");
        let frames = copy_through_frames(&from, &to);
        let data: u64 = frames
            .iter()
            .filter(|f| matches!(f, Frame::Data(_)))
            .map(Frame::len)
            .sum();
        // Only the pages around the two writes are read as data (tmpfs and
        // ext4 report data per page or block).
        assert!(data <= 2 * 2 * FRAME_BYTES as u64, "{data} bytes of data");
        assert_eq!(frames.iter().map(Frame::len).sum::<u64>(), size);
        let original = std::fs::read(&from).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), original);
        assert_eq!(
            digest_of(&frames),
            blake3::hash(&original).to_hex().to_string()
        );
        let meta = std::fs::metadata(&to).unwrap();
        assert_eq!(meta.len(), size);
        assert!(meta.blocks() * 512 < size / 4, "the copy is not sparse");
    }

    #[test]
    fn written_zeros_become_zero_runs_and_data_stays_data() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("dense");
        let mut content = vec![0u8; 3 * FRAME_BYTES + 17];
        content[FRAME_BYTES + 5] = 1;
        content[3 * FRAME_BYTES + 16] = 9;
        std::fs::write(&from, &content).unwrap();
        let to = dir.path().join("copy");
        let frames = copy_through_frames(&from, &to);
        assert_eq!(frames.len(), 4, "{frames:?}");
        assert_eq!(frames[0], Frame::Zeros(FRAME_BYTES as u64));
        assert!(matches!(frames[1], Frame::Data(_)));
        assert_eq!(frames[2], Frame::Zeros(FRAME_BYTES as u64));
        assert!(matches!(frames[3], Frame::Data(_)));
        assert_eq!(std::fs::read(&to).unwrap(), content);
        assert_eq!(
            digest_of(&frames),
            blake3::hash(&content).to_hex().to_string()
        );
    }

    #[test]
    fn a_trailing_zero_run_sets_the_length_and_a_resume_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut writer = FrameWriter::new(File::create(&path).unwrap());
        writer
            .write(&Frame::Data(Bytes::from_static(b"abc")))
            .unwrap();
        writer.write(&Frame::Zeros(5)).unwrap();
        writer.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc\0\0\0\0\0");
        // Resume after 4 bytes: the rest is replaced.
        let file = File::options().write(true).open(&path).unwrap();
        let mut writer = FrameWriter::resuming(file, 4).unwrap();
        writer
            .write(&Frame::Data(Bytes::from_static(b"xy")))
            .unwrap();
        assert_eq!(writer.written(), 6);
        writer.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc\0xy");
        let reader = FrameReader::new(File::open(&path).unwrap())
            .unwrap()
            .from_offset(4);
        let rest: Vec<Frame> = reader.collect::<io::Result<_>>().unwrap();
        assert_eq!(rest, vec![Frame::Data(Bytes::from_static(b"xy"))]);
    }

    #[tokio::test]
    async fn a_sink_hashes_and_writes_every_frame_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sunk");
        let mut content = Vec::new();
        let writer = FrameWriter::new(File::create(&path).unwrap()).with_early_writeback();
        let mut sink = FrameSink::start(blake3::Hasher::new(), Some(writer));
        for i in 0..40u8 {
            // Data frames of a few sizes, and zero runs between them.
            let data = vec![i + 1; 300_000 + usize::from(i) * 1000];
            content.extend_from_slice(&data);
            sink.push(Frame::Data(Bytes::from(data))).await.unwrap();
            if i % 3 == 0 {
                content.extend(std::iter::repeat_n(0u8, 5000));
                sink.push(Frame::Zeros(5000)).await.unwrap();
            }
        }
        let (hasher, writer) = sink.finish().await.unwrap();
        writer.unwrap().finish().unwrap().sync_all().unwrap();
        assert_eq!(hasher.finalize(), blake3::hash(&content));
        assert_eq!(std::fs::read(&path).unwrap(), content);
    }

    #[tokio::test]
    async fn a_sink_whose_writer_fails_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read-only");
        std::fs::write(&path, b"").unwrap();
        // Opened for reading only: every write fails.
        let writer = FrameWriter::new(File::open(&path).unwrap());
        let mut sink = FrameSink::start(blake3::Hasher::new(), Some(writer));
        let mut failed = false;
        for _ in 0..(2 * QUEUED_FRAMES + 2) {
            if sink
                .push(Frame::Data(Bytes::from_static(b"data")))
                .await
                .is_err()
            {
                failed = true;
                break;
            }
        }
        assert!(failed, "the writer's failure was never reported");
        assert!(sink.push(Frame::Zeros(1)).await.is_err());
        assert!(sink.finish().await.is_err());
    }

    #[test]
    fn chunks_carry_data_then_zeros_and_zero_runs_become_bytes_on_demand() {
        let chunk = proto::Chunk {
            data: Bytes::from_static(b"ab"),
            zeros: 3,
            ..Default::default()
        };
        let frames: Vec<Frame> = Frame::from_chunk(chunk).collect();
        assert_eq!(
            frames,
            vec![Frame::Data(Bytes::from_static(b"ab")), Frame::Zeros(3)]
        );
        let pieces: Vec<Bytes> = Frame::Zeros(FRAME_BYTES as u64 + 2).into_bytes().collect();
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[1].len(), 2);
        assert!(Frame::from_chunk(proto::Chunk::default()).next().is_none());
        assert!(is_all_zero(&[0; 10_000]));
        assert!(!is_all_zero(&[&[0u8; 9_999][..], &[1]].concat()));
    }
}
