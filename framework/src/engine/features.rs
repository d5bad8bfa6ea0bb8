//! The feature cache. Methods that run the backbone forward only (`BackboneUse::Frozen`) on
//! unaugmented images see the same backbone outputs every epoch; the engine computes them once per
//! backbone, preprocessing and split and reuses them for every epoch, method and seed of a task.
//!
//! Each layer (a block's output, or the final tokens) of a split is kept on its own: in memory
//! while the resident layers fit the byte budget, else written to disk as it is computed and
//! memory-mapped. Disk layers are shared by every process using the same folder (Slurm array
//! tasks, shards): a layer is written to a temporary file and renamed into place, then its meta
//! file, renamed last, marks it complete; a later process reuses only complete layers.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde_json::{Value, json};

use crate::adaptation::Taps;
use crate::canonical::{canonical_json, sha256_hex};
use crate::data::{Batch, DataError};
use crate::recipe::Split;
use crate::vit::{NoHooks, Vit};

#[path = "features_disk.rs"]
mod disk;

use disk::{LayerFile, Sink};

/// What a cached feature set was computed from; hashed (canonical JSON, SHA-256), together with
/// the dtype the backbone computes in, into its folder name.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureKey {
    /// The backbone's weights and architecture (e.g. the checkpoint's hash and the image size).
    pub backbone: Value,
    /// The dataset and task the images come from.
    pub dataset: Value,
    /// How images become network inputs.
    pub preprocess: Value,
    /// The split.
    pub split: Split,
}

impl FeatureKey {
    /// The key as JSON with the backbone's compute dtype: a bf16 backbone on a GPU and an f32 one
    /// on a CPU give different outputs from the same recipe (`dtype = "auto"`).
    fn json(&self, dtype: DType) -> Value {
        json!({
            "backbone": self.backbone,
            "dataset": self.dataset,
            "preprocess": self.preprocess,
            "split": self.split.name(),
            "dtype": dtype.as_str(),
        })
    }

    /// The cache folder's name for a backbone computing in `dtype`: 16 hex digits of the hash.
    pub fn folder_name(&self, dtype: DType) -> String {
        let mut hash = sha256_hex(canonical_json(&self.json(dtype)).as_bytes());
        hash.truncate(16);
        hash
    }
}

/// A layer of backbone output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    /// Block `i`'s output (0-based), before the final norm.
    Block(usize),
    /// The last block's tokens after the final norm.
    Tokens,
}

impl Layer {
    /// Its name in file names: `block3`, `tokens`.
    pub fn name(self) -> String {
        match self {
            Layer::Block(i) => format!("block{i}"),
            Layer::Tokens => "tokens".into(),
        }
    }
}

/// How often layers were computed or reused, counted per layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Layers computed by running the backbone.
    pub computed: usize,
    /// Layers reused from memory (resident, or mapped earlier by this cache).
    pub from_memory: usize,
    /// Layers reused from complete files on disk.
    pub from_disk: usize,
}

/// Why features could not be computed, stored or read.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// The images could not be loaded.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Running the backbone or building a tensor failed.
    #[error("computing features: {}", crate::error::Plain(.0))]
    Tensor(#[from] candle_core::Error),
    /// A cache file could not be written or read.
    #[error("feature cache file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A tap past the backbone's last block.
    #[error("block {block} is tapped, but the backbone has {depth} blocks (0 to {})", depth.saturating_sub(1))]
    NoBlock {
        /// The tapped block.
        block: usize,
        /// The backbone's depth.
        depth: usize,
    },
    /// An image index past the end of the split.
    #[error("image {index} is out of range: the split has {len} images")]
    Index {
        /// The index asked for.
        index: usize,
        /// Images in the split.
        len: usize,
    },
    /// The images' labels differ from the labels cached under the same key.
    #[error(
        "the labels of the images differ from those cached in {}: the key does not describe the data; \
         delete the folder",
        dir.display()
    )]
    Labels {
        /// The key's cache folder.
        dir: PathBuf,
    },
}

/// A layer's bytes: raw rows, one per image, in the stored dtype.
enum Bytes {
    Memory(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Memory(v) => v,
            Bytes::Mapped(m) => m,
        }
    }
}

/// One layer of a split: `images` × `tokens` × `width` values of `dtype`.
struct Stored {
    bytes: Bytes,
    dtype: DType,
    images: usize,
    tokens: usize,
    width: usize,
}

impl fmt::Debug for Stored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match self.bytes {
            Bytes::Memory(_) => "memory",
            Bytes::Mapped(_) => "mapped",
        };
        write!(f, "Stored([{}, {}, {}] {:?} in {place})", self.images, self.tokens, self.width, self.dtype)
    }
}

impl Stored {
    /// Bytes held in memory (a mapped layer lives in the page cache, which the OS may drop).
    fn resident(&self) -> u64 {
        match &self.bytes {
            Bytes::Memory(v) => v.len() as u64,
            Bytes::Mapped(_) => 0,
        }
    }

    /// The rows of `indices` (checked by the caller) as a [n, tokens, width] tensor.
    fn gather(&self, indices: &[usize], dtype: DType, device: &Device) -> Result<Tensor, FeatureError> {
        let row = self.tokens * self.width * self.dtype.size_in_bytes();
        let data = self.bytes.as_slice();
        let mut buf = Vec::with_capacity(indices.len() * row);
        for &i in indices {
            buf.extend_from_slice(&data[i * row..(i + 1) * row]);
        }
        let shape = [indices.len(), self.tokens, self.width];
        let t = Tensor::from_raw_buffer(&buf, self.dtype, &shape, &Device::Cpu)?;
        // Moved before converting: a half-precision copy crosses to the GPU in half the time.
        Ok(t.to_device(device)?.to_dtype(dtype)?)
    }
}

/// A cached layer and when it was last used (for least-recently-used eviction).
#[derive(Debug)]
struct Entry {
    layer: Arc<Stored>,
    used: u64,
}

/// Backbone outputs of whole splits, computed once and reused.
#[derive(Debug)]
pub struct FeatureCache {
    dir: PathBuf,
    budget: u64,
    store: Option<DType>,
    /// By key folder, layer and stored dtype.
    layers: HashMap<(String, Layer, DType), Entry>,
    /// Each key folder's labels, in split order.
    labels: HashMap<String, Arc<[u32]>>,
    clock: u64,
    stats: CacheStats,
}

impl FeatureCache {
    /// `dir`: where layers past the memory budget are written and memory-mapped (created on
    /// demand); `memory_budget_bytes`: resident layers together stay within it; `store`: the
    /// float dtype layers are stored in (None = the backbone's own dtype).
    pub fn new(dir: impl Into<PathBuf>, memory_budget_bytes: u64, store: Option<DType>) -> Self {
        Self {
            dir: dir.into(),
            budget: memory_budget_bytes,
            store,
            layers: HashMap::new(),
            labels: HashMap::new(),
            clock: 0,
            stats: CacheStats::default(),
        }
    }

    /// Counters for tests and logs: layers computed, reused from memory, reused from disk.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Bytes of the layers held in memory (within the budget).
    pub fn resident_bytes(&self) -> u64 {
        self.layers.values().map(|e| e.layer.resident()).sum()
    }

    /// The outputs of `vit` for every image `batches` yields (a whole split, in split order,
    /// unaugmented) at the blocks `taps` plus the final tokens. Layers already cached (in memory,
    /// or complete on disk under the key) are reused; the others are computed in one pass over
    /// `batches`, which is not read at all when nothing is missing.
    pub fn features<I>(
        &mut self,
        key: &FeatureKey,
        vit: &Vit,
        taps: &[usize],
        batches: I,
    ) -> Result<SplitFeatures, FeatureError>
    where
        I: Iterator<Item = Result<Batch, DataError>>,
    {
        let depth = vit.blocks.len();
        if let Some(&block) = taps.iter().find(|&&b| b >= depth) {
            return Err(FeatureError::NoBlock { block, depth });
        }
        let dtype = vit.pos_embed.dtype();
        let store = self.store.unwrap_or(dtype);
        let key_json = key.json(dtype);
        let folder = key.folder_name(dtype);
        let shape = [vit.config.num_tokens(), vit.width()];
        let mut wanted: Vec<Layer> = taps.iter().map(|&i| Layer::Block(i)).chain([Layer::Tokens]).collect();
        wanted.sort();
        wanted.dedup();

        // Holding the found layers also keeps them from being evicted while the rest is computed.
        let mut found: HashMap<Layer, Arc<Stored>> = HashMap::new();
        let mut missing = Vec::new();
        for layer in wanted {
            let id = (folder.clone(), layer, store);
            if let Some(entry) = self.layers.get_mut(&id) {
                self.clock += 1;
                entry.used = self.clock;
                found.insert(layer, entry.layer.clone());
                self.stats.from_memory += 1;
                continue;
            }
            let file = LayerFile::new(&self.dir.join(&folder), layer, store);
            let known = self.labels.get(&folder).cloned();
            match file.open(shape, known.as_deref()) {
                Some((stored, labels)) => {
                    self.labels.entry(folder.clone()).or_insert_with(|| labels.into());
                    let stored = Arc::new(stored);
                    self.insert(id, stored.clone());
                    found.insert(layer, stored);
                    self.stats.from_disk += 1;
                }
                None => missing.push(layer),
            }
        }
        if !missing.is_empty() {
            let computed = self.compute(&folder, &key_json, vit, store, &missing, batches)?;
            for (layer, stored) in computed {
                self.insert((folder.clone(), layer, store), stored.clone());
                found.insert(layer, stored);
                self.stats.computed += 1;
            }
        }

        let take = |layer: Layer| found.get(&layer).cloned();
        let blocks = taps.iter().map(|&i| take(Layer::Block(i))).collect::<Option<Vec<_>>>();
        let labels = self.labels.get(&folder).cloned();
        match (blocks, take(Layer::Tokens), labels) {
            (Some(blocks), Some(tokens), Some(labels)) => Ok(SplitFeatures { blocks, tokens, labels, dtype }),
            // Every wanted layer was found or computed above, and either sets the labels.
            _ => Err(candle_core::Error::Msg("feature cache: a computed layer went missing".into()).into()),
        }
    }

    fn insert(&mut self, id: (String, Layer, DType), layer: Arc<Stored>) {
        self.clock += 1;
        self.layers.insert(id, Entry { layer, used: self.clock });
    }

    /// Runs the backbone over `batches` once and stores the `missing` layers, each in memory while
    /// the budget allows and spilled to disk past it.
    fn compute<I>(
        &mut self,
        folder: &str,
        key_json: &Value,
        vit: &Vit,
        store: DType,
        missing: &[Layer],
        batches: I,
    ) -> Result<Vec<(Layer, Arc<Stored>)>, FeatureError>
    where
        I: Iterator<Item = Result<Batch, DataError>>,
    {
        let dir = self.dir.join(folder);
        let keep_blocks = missing.iter().any(|l| matches!(l, Layer::Block(_)));
        let mut sinks: Vec<Sink> =
            missing.iter().map(|&l| Sink::new(LayerFile::new(&dir, l, store))).collect();
        let mut labels: Vec<u32> = Vec::new();
        let device = vit.pos_embed.device();
        for batch in batches {
            let batch = batch?;
            let images = batch.images.to_device(device)?;
            let out = vit.forward(&images, &NoHooks, keep_blocks)?;
            labels.extend(batch.labels.to_dtype(DType::U32)?.to_vec1::<u32>()?);
            for (i, &layer) in missing.iter().enumerate() {
                let t = match layer {
                    Layer::Block(b) => &out.blocks[b],
                    Layer::Tokens => &out.tokens,
                };
                // Little-endian rows, which `Tensor::from_raw_buffer` reads back on the
                // little-endian machines losa runs on.
                let mut rows = Vec::new();
                t.to_dtype(store)?.to_device(&Device::Cpu)?.write_bytes(&mut rows)?;
                self.append(&mut sinks, i, &rows)?;
            }
        }
        match self.labels.get(folder) {
            Some(known) if **known != *labels => return Err(FeatureError::Labels { dir }),
            Some(_) => {}
            None => {
                self.labels.insert(folder.to_owned(), labels.as_slice().into());
            }
        }
        let shape = [labels.len(), vit.config.num_tokens(), vit.width()];
        let mut out = Vec::new();
        for (sink, &layer) in sinks.into_iter().zip(missing) {
            out.push((layer, Arc::new(sink.finish(shape, &labels, key_json)?)));
        }
        Ok(out)
    }

    /// Appends `rows` to sink `i`, first spilling it to disk if the resident layers, the sinks
    /// still in memory and these rows would not fit the budget.
    fn append(&mut self, sinks: &mut [Sink], i: usize, rows: &[u8]) -> Result<(), FeatureError> {
        if sinks[i].in_memory() {
            let pending: u64 = sinks.iter().map(Sink::resident).sum();
            if !self.make_room(pending + rows.len() as u64) {
                sinks[i].spill()?;
            }
        }
        sinks[i].write(rows)
    }

    /// Evicts least-recently-used resident layers that no [`SplitFeatures`] holds until `extra`
    /// more bytes fit the budget; false (and nothing evicted) when they cannot.
    fn make_room(&mut self, extra: u64) -> bool {
        let mut resident = self.resident_bytes();
        if resident + extra <= self.budget {
            return true;
        }
        let mut free: Vec<(u64, (String, Layer, DType), u64)> = self
            .layers
            .iter()
            .filter(|(_, e)| Arc::strong_count(&e.layer) == 1 && e.layer.resident() > 0)
            .map(|(id, e)| (e.used, id.clone(), e.layer.resident()))
            .collect();
        let evictable: u64 = free.iter().map(|(_, _, size)| size).sum();
        if resident - evictable + extra > self.budget {
            return false;
        }
        free.sort_by_key(|(used, _, _)| *used);
        for (_, id, size) in free {
            if resident + extra <= self.budget {
                break;
            }
            self.layers.remove(&id);
            resident -= size;
        }
        true
    }
}

/// One split's cached backbone outputs: the tapped blocks, the final tokens and the labels.
#[derive(Debug, Clone)]
pub struct SplitFeatures {
    blocks: Vec<Arc<Stored>>,
    tokens: Arc<Stored>,
    labels: Arc<[u32]>,
    /// The backbone's dtype, in which batches are returned.
    dtype: DType,
}

impl SplitFeatures {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split has no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The labels, in split order.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The taps (in the order given to [`FeatureCache::features`]) and tokens of images
    /// `indices`, on `device` in the backbone's dtype, as the engine passes them to
    /// `Adaptation::forward_taps`; and their labels as a `u32` tensor.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<(Taps, Tensor), FeatureError> {
        if let Some(&index) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(FeatureError::Index { index, len: self.len() });
        }
        let blocks = self
            .blocks
            .iter()
            .map(|l| l.gather(indices, self.dtype, device))
            .collect::<Result<Vec<_>, _>>()?;
        let tokens = self.tokens.gather(indices, self.dtype, device)?;
        let labels: Vec<u32> = indices.iter().map(|&i| self.labels[i]).collect();
        Ok((Taps { blocks, tokens }, Tensor::from_vec(labels, indices.len(), device)?))
    }

    /// Bytes of the layers it reads, in memory or mapped.
    pub fn bytes(&self) -> u64 {
        self.layers().map(|l| l.bytes.as_slice().len() as u64).sum()
    }

    /// Whether any of its layers is memory-mapped from disk.
    pub fn mapped(&self) -> bool {
        self.layers().any(|l| matches!(l.bytes, Bytes::Mapped(_)))
    }

    /// Each distinct layer once (a block tapped twice is one layer).
    fn layers(&self) -> impl Iterator<Item = &Stored> {
        let mut distinct: Vec<&Arc<Stored>> = Vec::new();
        for l in self.blocks.iter().chain([&self.tokens]) {
            if !distinct.iter().any(|d| Arc::ptr_eq(d, l)) {
                distinct.push(l);
            }
        }
        distinct.into_iter().map(|l| &**l)
    }
}

/// `path` for error messages.
fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> FeatureError + '_ {
    move |source| FeatureError::Io { path: path.to_owned(), source }
}

#[cfg(test)]
#[path = "features_tests.rs"]
mod tests;
