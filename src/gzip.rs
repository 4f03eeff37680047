//! Parallel gzip compression into independent members.
//!
//! The input is cut into fixed-size blocks, each compressed on its own thread as one
//! gzip member (mtime 0, no file name), and the members are written in input order.
//! RFC 1952 allows a gzip file to be a series of members, and multi-member files are
//! what `pigz --independent` writes; Go's `compress/gzip` (used by containerd, Docker and
//! skopeo) and flate2's `MultiGzDecoder` read them as one stream. The output depends only
//! on the input, the block size and the level, never on the number of threads.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::thread::{self, JoinHandle};

use flate2::{Compression, GzBuilder};

/// The uncompressed size of one member. Larger blocks compress slightly better; 1 MiB
/// keeps the memory in flight to a few MiB per thread.
pub const BLOCK_SIZE: usize = 1024 * 1024;

/// A writer that gzip-compresses blocks on worker threads and writes the members in order.
pub struct ParallelGzWriter<W: Write> {
    inner: W,
    level: u32,
    block: Vec<u8>,
    pending: VecDeque<JoinHandle<io::Result<Vec<u8>>>>,
    max_pending: usize,
}

impl<W: Write> ParallelGzWriter<W> {
    /// Creates a writer with one compression thread per available core.
    pub fn new(inner: W, level: u32) -> Self {
        let threads = thread::available_parallelism().map_or(1, usize::from);
        Self {
            inner,
            level,
            block: Vec::with_capacity(BLOCK_SIZE),
            pending: VecDeque::new(),
            max_pending: threads,
        }
    }

    fn submit_block(&mut self) -> io::Result<()> {
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK_SIZE));
        let level = self.level;
        self.pending
            .push_back(thread::spawn(move || compress_member(&block, level)));
        while self.pending.len() > self.max_pending {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(handle) = self.pending.pop_front() else {
            return Ok(());
        };
        let member = handle
            .join()
            .map_err(|_| io::Error::other("a gzip compression thread panicked"))??;
        self.inner.write_all(&member)
    }

    /// Compresses what is left, writes every member and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.block.is_empty() || self.pending.is_empty() {
            self.submit_block()?;
        }
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParallelGzWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = BLOCK_SIZE - self.block.len();
        let taken = room.min(buf.len());
        self.block.extend_from_slice(&buf[..taken]);
        if self.block.len() == BLOCK_SIZE {
            self.submit_block()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn compress_member(block: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::with_capacity(block.len() / 2), Compression::new(level));
    encoder.write_all(block)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::MultiGzDecoder;

    use super::*;

    fn compress(data: &[u8]) -> Vec<u8> {
        let mut writer = ParallelGzWriter::new(Vec::new(), 6);
        writer.write_all(data).unwrap();
        writer.finish().unwrap()
    }

    fn patterned(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 4096) as u8)
            .collect()
    }

    #[test]
    fn round_trip_across_blocks() {
        for len in [
            0,
            1,
            BLOCK_SIZE - 1,
            BLOCK_SIZE,
            BLOCK_SIZE + 1,
            3 * BLOCK_SIZE + 17,
        ] {
            let data = patterned(len);
            let compressed = compress(&data);
            let mut decoded = Vec::new();
            MultiGzDecoder::new(&compressed[..])
                .read_to_end(&mut decoded)
                .unwrap();
            assert_eq!(decoded, data, "length {len}");
        }
    }

    #[test]
    fn output_is_reproducible() {
        let data = patterned(2 * BLOCK_SIZE + 5);
        assert_eq!(compress(&data), compress(&data));
    }

    #[test]
    fn members_have_no_name_or_time() {
        let compressed = compress(b"layer");
        assert_eq!(
            &compressed[..4],
            &[0x1f, 0x8b, 8, 0],
            "magic, deflate, no flags"
        );
        assert_eq!(&compressed[4..8], &[0, 0, 0, 0], "mtime 0");
        assert_eq!(compressed[9], 255, "unknown OS");
    }

    #[test]
    fn gzip_tool_reads_all_members() {
        let data = patterned(2 * BLOCK_SIZE + 5);
        let compressed = compress(&data);
        let mut child = std::process::Command::new("gzip")
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip must be installed");
        let mut stdin = child.stdin.take().unwrap();
        let writer = thread::spawn(move || stdin.write_all(&compressed));
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(output.status.success());
        assert_eq!(output.stdout, data);
    }
}
