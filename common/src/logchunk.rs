//! The stored form of an attempt's log: JSON lines (one record a line: stream,
//! sequence number, timestamp, text), packed into gzip members of at most
//! [`CHUNK_RAW_BYTES`] of lines each and concatenated into one blob. A reader
//! decodes such a blob as a stream, a piece at a time, so holding one costs
//! about a chunk whatever the log's size; a blob of plain JSON lines (the form
//! before chunks) decodes the same way.

use std::io::Write;

use flate2::Compression;
use flate2::write::{GzEncoder, MultiGzDecoder};
use serde::{Deserialize, Serialize};

/// Raw bytes of lines in one compressed chunk at most (a chunk is closed at the
/// first line past it).
pub const CHUNK_RAW_BYTES: usize = 1024 * 1024;
/// Compressed input fed to the decoder at a time: deflate expands at most about
/// 1,032 times, so the lines it yields at once stay around a chunk.
const FEED_BYTES: usize = 1024;

/// One line of an attempt's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub stream: String,
    pub seq: u64,
    pub timestamp_ms: i64,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LogChunkError {
    #[error("cannot write the log: {0}")]
    Io(#[from] std::io::Error),
    #[error("the log holds a line that does not decode: {0}")]
    Line(#[from] serde_json::Error),
}

/// Writes records into `out` as compressed chunks.
pub struct ChunkWriter<W: Write> {
    out: W,
    chunk: Option<GzEncoder<Vec<u8>>>,
    chunk_raw: usize,
    line: Vec<u8>,
    /// Raw bytes of lines written, and compressed bytes written to `out`.
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

impl<W: Write> ChunkWriter<W> {
    pub fn new(out: W) -> Self {
        ChunkWriter {
            out,
            chunk: None,
            chunk_raw: 0,
            line: Vec::new(),
            raw_bytes: 0,
            stored_bytes: 0,
        }
    }

    /// Adds one record; a chunk that reached its size is compressed out.
    pub fn push(&mut self, record: &LogRecord) -> Result<(), LogChunkError> {
        self.push_line(
            &record.stream,
            record.seq,
            record.timestamp_ms,
            &record.text,
        )
    }

    /// Adds one record given by its parts.
    pub fn push_line(
        &mut self,
        stream: &str,
        seq: u64,
        timestamp_ms: i64,
        text: &str,
    ) -> Result<(), LogChunkError> {
        #[derive(Serialize)]
        struct Line<'a> {
            stream: &'a str,
            seq: u64,
            timestamp_ms: i64,
            text: &'a str,
        }
        self.line.clear();
        let line = Line {
            stream,
            seq,
            timestamp_ms,
            text,
        };
        serde_json::to_writer(&mut self.line, &line)?;
        self.line.push(b'\n');
        let chunk = self
            .chunk
            .get_or_insert_with(|| GzEncoder::new(Vec::new(), Compression::fast()));
        chunk.write_all(&self.line)?;
        self.chunk_raw += self.line.len();
        self.raw_bytes += self.line.len() as u64;
        if self.chunk_raw >= CHUNK_RAW_BYTES {
            self.seal()?;
        }
        Ok(())
    }

    /// Closes the open chunk, if any, and writes it out.
    pub fn seal(&mut self) -> Result<(), LogChunkError> {
        if let Some(chunk) = self.chunk.take() {
            let bytes = chunk.finish()?;
            self.out.write_all(&bytes)?;
            self.stored_bytes += bytes.len() as u64;
            self.chunk_raw = 0;
        }
        Ok(())
    }

    /// Seals the last chunk and hands the output back.
    pub fn finish(mut self) -> Result<W, LogChunkError> {
        self.seal()?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Decodes a stored log fed to it in pieces of any size: chunked (gzip) or
/// plain JSON lines, told apart by the first bytes.
pub struct LogDecoder {
    gzip: Option<MultiGzDecoder<Vec<u8>>>,
    /// Plain bytes not yet cut into lines (a line's start).
    pending: Vec<u8>,
    /// Whether the form is known yet (a blob's first byte decides it).
    started: bool,
}

impl Default for LogDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl LogDecoder {
    pub fn new() -> Self {
        LogDecoder {
            gzip: None,
            pending: Vec::new(),
            started: false,
        }
    }

    /// Feeds the next piece of the blob; returns the records completed by it.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<LogRecord>, LogChunkError> {
        if !self.started && !bytes.is_empty() {
            self.started = true;
            if bytes[0] == 0x1f {
                self.gzip = Some(MultiGzDecoder::new(Vec::new()));
            }
        }
        let mut records = Vec::new();
        match self.gzip.as_mut() {
            Some(decoder) => {
                while !bytes.is_empty() {
                    let (piece, rest) = bytes.split_at(bytes.len().min(FEED_BYTES));
                    decoder.write_all(piece)?;
                    bytes = rest;
                    let plain = std::mem::take(decoder.get_mut());
                    self.pending.extend_from_slice(&plain);
                    take_lines(&mut self.pending, &mut records)?;
                }
            }
            None => {
                self.pending.extend_from_slice(bytes);
                take_lines(&mut self.pending, &mut records)?;
            }
        }
        Ok(records)
    }

    /// The end of the blob: a last line without a newline, if any.
    pub fn finish(mut self) -> Result<Vec<LogRecord>, LogChunkError> {
        if let Some(decoder) = self.gzip.take() {
            let plain = decoder.finish()?;
            self.pending.extend_from_slice(&plain);
        }
        let mut records = Vec::new();
        take_lines(&mut self.pending, &mut records)?;
        if self.pending.iter().any(|b| !b.is_ascii_whitespace()) {
            records.push(serde_json::from_slice(&self.pending)?);
        }
        Ok(records)
    }
}

/// Moves the complete lines at the start of `pending` into `records`.
fn take_lines(pending: &mut Vec<u8>, records: &mut Vec<LogRecord>) -> Result<(), LogChunkError> {
    let Some(last) = pending.iter().rposition(|b| *b == b'\n') else {
        return Ok(());
    };
    for line in pending[..last].split(|b| *b == b'\n') {
        if !line.is_empty() {
            records.push(serde_json::from_slice(line)?);
        }
    }
    pending.drain(..=last);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, text: String) -> LogRecord {
        LogRecord {
            stream: if seq.is_multiple_of(3) {
                "stderr"
            } else {
                "stdout"
            }
            .to_string(),
            seq,
            timestamp_ms: 1_700_000_000_000 + seq as i64,
            text,
        }
    }

    fn decode(blob: &[u8], piece: usize) -> Vec<LogRecord> {
        let mut decoder = LogDecoder::new();
        let mut out = Vec::new();
        for bytes in blob.chunks(piece) {
            out.extend(decoder.feed(bytes).unwrap());
        }
        out.extend(decoder.finish().unwrap());
        out
    }

    #[test]
    fn chunks_round_trip_in_order_whatever_the_pieces() {
        let records: Vec<LogRecord> = (0..60_000)
            .map(|seq| {
                record(
                    seq,
                    format!("line {seq} {}", "é".repeat((seq % 40) as usize)),
                )
            })
            .collect();
        let mut writer = ChunkWriter::new(Vec::new());
        for line in &records {
            writer.push(line).unwrap();
        }
        writer.seal().unwrap();
        let (raw, stored) = (writer.raw_bytes, writer.stored_bytes);
        let blob = writer.finish().unwrap();
        assert!(raw > 2 * CHUNK_RAW_BYTES as u64, "several chunks: {raw}");
        assert!(stored < raw / 3, "compressed: {stored} of {raw}");
        assert_eq!(blob.len() as u64, stored);
        for piece in [1, 7, 8192, blob.len()] {
            assert_eq!(decode(&blob, piece), records, "pieces of {piece} bytes");
        }
    }

    #[test]
    fn plain_json_lines_still_decode() {
        let records: Vec<LogRecord> = (0..100).map(|seq| record(seq, "x".repeat(50))).collect();
        let mut blob = Vec::new();
        for line in &records {
            serde_json::to_writer(&mut blob, line).unwrap();
            blob.push(b'\n');
        }
        for piece in [1, 13, blob.len()] {
            assert_eq!(decode(&blob, piece), records);
        }
        // A last line without its newline, and an empty blob.
        blob.pop();
        assert_eq!(decode(&blob, 100), records);
        assert!(decode(&[], 1).is_empty());
    }

    #[test]
    fn a_highly_compressible_chunk_is_yielded_in_bounded_pieces() {
        let mut writer = ChunkWriter::new(Vec::new());
        for seq in 0..20_000 {
            writer.push(&record(seq, "y".repeat(100))).unwrap();
        }
        let blob = writer.finish().unwrap();
        let mut decoder = LogDecoder::new();
        let mut most = 0;
        let mut count = 0;
        for bytes in blob.chunks(1024) {
            let got = decoder.feed(bytes).unwrap();
            most = most.max(got.len());
            count += got.len();
        }
        count += decoder.finish().unwrap().len();
        assert_eq!(count, 20_000);
        assert!(most < count / 2, "streamed, not all at once: {most}");
    }

    #[test]
    fn a_damaged_blob_is_an_error() {
        let mut decoder = LogDecoder::new();
        assert!(decoder.feed(b"{\"not\": \"a record\"}\n").is_err());
    }
}
