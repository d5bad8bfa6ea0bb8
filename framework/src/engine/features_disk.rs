//! A layer's files: `<key folder>/<layer>.<dtype>.bin`, raw little-endian rows, one per image, and
//! `<layer>.<dtype>.json`, its meta (shape, labels, and the key for people), written last.
//!
//! Several processes, on several nodes, may write the same layer at once: each writes its own
//! temporary file (named by host name, process id and a counter) and renames it into place, so a reader sees a whole file or none,
//! and a file is never changed in place once there (which keeps memory maps of it valid).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::DType;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Bytes, FeatureError, Layer, Stored, io_error};

/// What a layer file holds; its presence marks the layer file complete.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    layer: String,
    dtype: String,
    /// [images, tokens, width].
    shape: [usize; 3],
    labels: Vec<u32>,
    /// The key the folder name hashes, for people; not compared (JSON floats need not read
    /// back bit for bit, and the 64-bit hash already tells keys apart).
    key: Value,
}

/// Where one layer of one key, stored in one dtype, lives on disk.
#[derive(Debug, Clone)]
pub(super) struct LayerFile {
    dir: PathBuf,
    stem: String,
    layer: Layer,
    dtype: DType,
}

impl LayerFile {
    pub(super) fn new(dir: &Path, layer: Layer, dtype: DType) -> Self {
        Self { dir: dir.to_owned(), stem: format!("{}.{}", layer.name(), dtype.as_str()), layer, dtype }
    }

    fn bin(&self) -> PathBuf {
        self.dir.join(format!("{}.bin", self.stem))
    }

    fn meta(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.stem))
    }

    /// A name no other writer uses: other processes differ in host name and pid (see
    /// [`writer_tag`](crate::record::writer_tag)), other writers in this
    /// process (threads, several caches on one folder) in the counter.
    fn temporary(&self, ext: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{}.{ext}.tmp.{}.{n}", self.stem, crate::record::writer_tag()))
    }

    /// The layer and its labels if it is complete on disk with `[tokens, width]` rows and, when
    /// the key's labels are `known`, the same labels. Anything missing, unreadable or not
    /// matching is not trusted: the caller recomputes it and replaces the files.
    pub(super) fn open(
        &self,
        [tokens, width]: [usize; 2],
        known: Option<&[u32]>,
    ) -> Option<(Stored, Vec<u32>)> {
        let meta: Meta = serde_json::from_slice(&std::fs::read(self.meta()).ok()?).ok()?;
        let [images, t, w] = meta.shape;
        let fits = meta.dtype == self.dtype.as_str()
            && [t, w] == [tokens, width]
            && meta.labels.len() == images
            && known.is_none_or(|k| k == meta.labels.as_slice());
        if !fits {
            return None;
        }
        let expected = (images * tokens * width * self.dtype.size_in_bytes()) as u64;
        let file = File::open(self.bin()).ok()?;
        if file.metadata().ok()?.len() != expected {
            return None;
        }
        let map = map(&file).ok()?;
        // Checked again on the mapping: the file may have been replaced since its size was read.
        if map.len() as u64 != expected {
            return None;
        }
        let stored = Stored { bytes: Bytes::Mapped(map), dtype: self.dtype, images, tokens, width };
        Some((stored, meta.labels))
    }
}

/// Maps a complete layer file.
#[allow(unsafe_code)]
fn map(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the mapping is read-only, and losa never writes to a layer file in place: a file is
    // complete when renamed into place and is only ever replaced by another rename, which leaves
    // this mapping on the old file. Only a program outside losa truncating or editing the file
    // could change the mapped bytes.
    unsafe { memmap2::Mmap::map(file) }
}

/// A temporary file, removed when dropped unless renamed into place.
struct Temporary {
    path: PathBuf,
    renamed: bool,
}

impl Temporary {
    fn rename(mut self, to: &Path) -> Result<(), FeatureError> {
        std::fs::rename(&self.path, to).map_err(io_error(to))?;
        self.renamed = true;
        Ok(())
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if !self.renamed {
            // Best effort: a leftover temporary file is never read, only wastes space.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where a layer being computed goes: memory, or a temporary file once it is spilled.
enum Data {
    Memory(Vec<u8>),
    Spilled { writer: BufWriter<File>, tmp: Temporary },
}

/// A layer being computed, batch by batch. Dropped unfinished (an error), it leaves no file.
pub(super) struct Sink {
    file: LayerFile,
    data: Data,
}

impl Sink {
    pub(super) fn new(file: LayerFile) -> Self {
        Self { file, data: Data::Memory(Vec::new()) }
    }

    pub(super) fn in_memory(&self) -> bool {
        matches!(self.data, Data::Memory(_))
    }

    /// Bytes held in memory.
    pub(super) fn resident(&self) -> u64 {
        match &self.data {
            Data::Memory(v) => v.len() as u64,
            Data::Spilled { .. } => 0,
        }
    }

    /// Moves what is in memory to a new temporary file; later rows are streamed to it.
    pub(super) fn spill(&mut self) -> Result<(), FeatureError> {
        let Data::Memory(rows) = &self.data else { return Ok(()) };
        std::fs::create_dir_all(&self.file.dir).map_err(io_error(&self.file.dir))?;
        let path = self.file.temporary("bin");
        // Readable too: the finished file is mapped through this handle.
        let created =
            File::options().read(true).write(true).create_new(true).open(&path).map_err(io_error(&path))?;
        let tmp = Temporary { path, renamed: false };
        let mut writer = BufWriter::with_capacity(1 << 20, created);
        writer.write_all(rows).map_err(io_error(&tmp.path))?;
        self.data = Data::Spilled { writer, tmp };
        Ok(())
    }

    pub(super) fn write(&mut self, rows: &[u8]) -> Result<(), FeatureError> {
        match &mut self.data {
            Data::Memory(v) => v.extend_from_slice(rows),
            Data::Spilled { writer, tmp } => writer.write_all(rows).map_err(io_error(&tmp.path))?,
        }
        Ok(())
    }

    /// The finished layer: in memory as it is, or its file renamed into place, its meta written
    /// (which marks it complete) and the file mapped.
    pub(super) fn finish(
        self,
        shape: [usize; 3],
        labels: &[u32],
        key: &Value,
    ) -> Result<Stored, FeatureError> {
        let [images, tokens, width] = shape;
        let dtype = self.file.dtype;
        let (writer, tmp) = match self.data {
            Data::Memory(v) => return Ok(Stored { bytes: Bytes::Memory(v), dtype, images, tokens, width }),
            Data::Spilled { writer, tmp } => (writer, tmp),
        };
        let file = writer.into_inner().map_err(|e| io_error(&tmp.path)(e.into_error()))?;
        // Durable before it is named complete: a crash must not leave a complete-looking file
        // whose blocks never reached the disk.
        file.sync_all().map_err(io_error(&tmp.path))?;
        let bin = self.file.bin();
        tmp.rename(&bin)?;
        let meta = Meta {
            layer: self.file.layer.name(),
            dtype: dtype.as_str().into(),
            shape,
            labels: labels.to_vec(),
            key: key.clone(),
        };
        let tmp = Temporary { path: self.file.temporary("json"), renamed: false };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| io_error(&tmp.path)(e.into()))?;
        std::fs::write(&tmp.path, json).map_err(io_error(&tmp.path))?;
        tmp.rename(&self.file.meta())?;
        let map = map(&file).map_err(io_error(&bin))?;
        Ok(Stored { bytes: Bytes::Mapped(map), dtype, images, tokens, width })
    }
}
