//! weft's durable state, in one sled tree, and plugin state as plugin calls
//! see it ([`pending`]).
//!
//! A checkpoint writes, atomically and durably: every plugin's pending state
//! writes, the dedup ids accepted and expired since the last checkpoint, the
//! messages rejected since then, and the pipeline's metadata (source
//! offsets, counters, the reorder buffer). After a crash the host resumes
//! from exactly that point, so nothing is lost or counted twice.
//!
//! A checkpoint of up to [`CHUNK`] writes is one sled batch. A larger one is
//! first one batch of two keys, its writes as one record (the intent) and
//! the metadata, and then applied in batches of [`CHUNK`] before the intent
//! is removed; [`Store::open`] finishes an intent a crash interrupted (the
//! writes set or remove whole values, so applying one twice is harmless).
//! sled 0.34 keeps every tree node an `apply_batch` replaces until the batch
//! ends, about 4 KB a write: one batch of 300 000 writes held 1.3 GB, in
//! batches of 1 000 the same writes held 130 MB.
//!
//! State is kept per partition (`{part}` below: the partition as u32 BE):
//! each partition's checkpoint is its own atomic write, so partitions are
//! checkpointed by different threads and moved between hosts one by one.
//!
//! Key layout (one tree, prefixes keep the parts apart):
//! - `p\0{plugin}\0{part}{key}`: plugin state;
//! - `d\0{part}{seq u64 BE}`: the event ids accepted between two checkpoints
//!   with their event times (postcard), for dedup;
//! - `r\0{part}{seq u64 BE}`: a rejected message ([`Rejected`]);
//! - `x\0{plugin}\0{part}{seq u64 BE}`: a batch a plugin failed on (a dead
//!   letter), opaque bytes to this crate;
//! - `m\0part\0{part}`: the partition's metadata, opaque bytes to this crate;
//! - `m\0intent\0{part}`: a large checkpoint's writes until they are applied;
//! - `m\0layout`: how input is split into partitions, opaque bytes to this
//!   crate (a different split would find state under the wrong partitions);
//! - `m\0member`: this data directory's member id in a Kafka consumer group;
//! - `m\0clog\0{part}`: the group changelog's end (i64 BE) right after the
//!   partition's last checkpoint here was appended to it (or restored);
//! - `c\0{part}{writer u64 BE}`: never stored here; reserved for the
//!   group changelog's claims (a host taking a partition, weft-pipeline);
//! - `w\0{digest}`: a plugin component's bytes, by their SHA-256, so any
//!   version ever loaded can be rolled back to;
//! - `i\0{plugin}`: what runs under an instance name and its version
//!   history, opaque bytes to this crate.

pub mod pending;

use std::{path::Path, sync::Arc};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use pending::{DurableState, Entries, PendingState, Write};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot open the state store at {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("state store at {path}: {action}: {source}")]
    Io {
        path: std::path::PathBuf,
        action: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error("state store: corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error(
        "the data directory {0} was written by an earlier weft, which kept all state in one partition; run that version to finish with it, or start with a new data directory (--data-dir)"
    )]
    OldLayout(std::path::PathBuf),
}

/// A partition of the input: the unit of state.
pub type Part = u32;

/// sled's page cache.
const CACHE_BYTES: u64 = 64 << 20;

const PLUGIN: &[u8] = b"p\0";
const DEDUP: &[u8] = b"d\0";
const REJECTED: &[u8] = b"r\0";
/// The one metadata key of the layout before partitions.
const OLD_META: &[u8] = b"m\0meta";
const META: &[u8] = b"m\0part\0";
const INTENT: &[u8] = b"m\0intent\0";
const LAYOUT: &[u8] = b"m\0layout";
const MEMBER: &[u8] = b"m\0member";
const CHANGELOG_END: &[u8] = b"m\0clog\0";
const DEAD: &[u8] = b"x\0";
const MODULE: &[u8] = b"w\0";
const INSTANCE: &[u8] = b"i\0";

/// The most writes one sled batch carries (see the module's docs).
const CHUNK: usize = 1_000;

/// Writes by full key: a value to set, or `None` to remove the key.
pub type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A sled batch of `writes`.
fn batch_of(writes: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (k, v) in writes {
        match v {
            Some(v) => batch.insert(k, v),
            None => batch.remove(k),
        }
    }
    batch
}

/// A message that failed validation, kept with (a bounded prefix of) its
/// raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// Reason code, e.g. `not_json`, `missing_user`, `late`.
    pub reason: String,
    pub detail: String,
    pub partition: i32,
    pub offset: i64,
    /// The message, or its first bytes when it was longer than the limit.
    pub raw: Vec<u8>,
    /// The message's whole length in bytes.
    pub raw_len: u64,
    /// Hex SHA-256 of the whole message, when `raw` is only its prefix.
    pub raw_sha256: Option<String>,
}

impl Rejected {
    /// A record of `raw` that keeps at most `limit` of its bytes, and the
    /// length and digest of the whole when it keeps fewer.
    pub fn keeping(
        reason: &str,
        detail: String,
        partition: i32,
        offset: i64,
        mut raw: Vec<u8>,
        limit: usize,
    ) -> Self {
        let raw_len = raw.len() as u64;
        let raw_sha256 = (raw.len() > limit).then(|| {
            let digest = hex::encode(Sha256::digest(&raw));
            raw.truncate(limit);
            raw.shrink_to_fit();
            digest
        });
        Rejected {
            reason: reason.to_owned(),
            detail,
            partition,
            offset,
            raw,
            raw_len,
            raw_sha256,
        }
    }

    /// Decodes a stored record, also one written before records had
    /// `raw_len` and `raw_sha256`.
    fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        #[derive(Deserialize)]
        struct Before {
            reason: String,
            detail: String,
            partition: i32,
            offset: i64,
            raw: Vec<u8>,
        }
        postcard::from_bytes(bytes).or_else(|e| {
            let b: Before = postcard::from_bytes(bytes).map_err(|_| e)?;
            Ok(Rejected {
                raw_len: b.raw.len() as u64,
                reason: b.reason,
                detail: b.detail,
                partition: b.partition,
                offset: b.offset,
                raw: b.raw,
                raw_sha256: None,
            })
        })
    }
}

/// Event ids accepted for dedup, with their event times.
pub type DedupIds = Vec<(String, i64)>;

/// Everything one checkpoint writes.
#[derive(Default)]
pub struct Checkpoint {
    pub plugin_writes: Vec<(String, Vec<Write>)>,
    /// Dedup ids accepted since the last checkpoint, as one record under a
    /// sequence number, with their event times.
    pub dedup_added: Option<(u64, DedupIds)>,
    /// Dedup records whose ids have all expired.
    pub dedup_removed: Vec<u64>,
    pub rejected: Vec<(u64, Rejected)>,
    /// Dead letters: (plugin, sequence number, encoded record).
    pub dead_letters: Vec<(String, u64, Vec<u8>)>,
    /// Dead letters replayed since the last checkpoint: (plugin, sequence).
    pub dead_letters_removed: Vec<(String, u64)>,
    pub meta: Vec<u8>,
}

impl Checkpoint {
    /// The checkpoint of partition `part` as writes by full key, its
    /// metadata last: what [`Store::apply`] makes durable and a changelog
    /// carries.
    pub fn into_writes(self, part: Part) -> Result<Writes, StateError> {
        let p = part.to_be_bytes();
        let mut writes: Writes = Vec::new();
        for (plugin, plugin_writes) in self.plugin_writes {
            for (k, v) in plugin_writes {
                writes.push((key(&[PLUGIN, plugin.as_bytes(), b"\0", &p, &k]), v));
            }
        }
        if let Some((seq, ids)) = self.dedup_added {
            let bytes = encode("dedup record", &ids)?;
            writes.push((key(&[DEDUP, &p, &seq.to_be_bytes()]), Some(bytes)));
        }
        for seq in self.dedup_removed {
            writes.push((key(&[DEDUP, &p, &seq.to_be_bytes()]), None));
        }
        for (seq, r) in self.rejected {
            let bytes = encode("rejected record", &r)?;
            writes.push((key(&[REJECTED, &p, &seq.to_be_bytes()]), Some(bytes)));
        }
        for (plugin, seq, record) in self.dead_letters {
            let k = key(&[DEAD, plugin.as_bytes(), b"\0", &p, &seq.to_be_bytes()]);
            writes.push((k, Some(record)));
        }
        for (plugin, seq) in self.dead_letters_removed {
            let k = key(&[DEAD, plugin.as_bytes(), b"\0", &p, &seq.to_be_bytes()]);
            writes.push((k, None));
        }
        writes.push((meta_key(part), Some(self.meta)));
        Ok(writes)
    }
}

/// The key of partition `part`'s metadata: the last write of each of its
/// checkpoints.
pub fn meta_key(part: Part) -> Vec<u8> {
    key(&[META, &part.to_be_bytes()])
}

/// The partition a key of partition state belongs to; `None` for keys of
/// the whole store (layout, member id, modules, instances).
fn part_of_key(k: &[u8]) -> Option<Part> {
    let at = if let Some(rest) = k.strip_prefix(PLUGIN).or_else(|| k.strip_prefix(DEAD)) {
        k.len() - rest.len() + rest.iter().position(|&b| b == 0)? + 1
    } else {
        [DEDUP, REJECTED, META, INTENT]
            .iter()
            .find(|prefix| k.starts_with(prefix))?
            .len()
    };
    part_at(k, at, "key").ok()
}

/// The state store.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
    /// The store's directory, named in errors.
    path: Arc<Path>,
}

/// An error of `action` on the store at `path`.
fn io(path: &Path, action: &'static str) -> impl FnOnce(sled::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io {
        path,
        action,
        source,
    }
}

/// `value` as postcard bytes; `what` names it in the error.
fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, StateError> {
    postcard::to_allocvec(value).map_err(|e| StateError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

fn key(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

impl Store {
    fn io(&self, action: &'static str) -> impl FnOnce(sled::Error) -> StateError {
        io(&self.path, action)
    }

    /// Opens (or creates) the store in `dir`. sled recovers a log cut short
    /// by a crash to its last complete write, which is a checkpoint; a file
    /// damaged beyond that is a [`StateError::Corrupt`] naming it (sled
    /// panics on some damage; the panic is caught and said so).
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let config = sled::Config::new()
            .path(dir)
            // sled's default page cache is 1 GiB; plugins keep their hot state
            // in their own memory, so reads here are mostly first touches.
            .cache_capacity(CACHE_BYTES);
        // Said once, as the error below, not also by the default panic hook.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()));
        std::panic::set_hook(hook);
        let opened = opened.map_err(|panic| {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message");
                StateError::Corrupt {
                    what: "file",
                    detail: format!(
                        "{} cannot be read ({why}): restore the data directory from a backup, or move it away to start empty",
                        dir.join("db").display()
                    ),
                }
            })?;
        let db = opened.map_err(|source| StateError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        let tree = db.open_tree("weft").map_err(io(dir, "open tree"))?;
        let store = Store {
            db,
            tree,
            path: Arc::from(dir),
        };
        if store
            .tree
            .contains_key(OLD_META)
            .map_err(store.io("read meta"))?
        {
            return Err(StateError::OldLayout(dir.to_path_buf()));
        }
        // A crash interrupted large checkpoints after they were committed.
        for item in store.tree.scan_prefix(INTENT) {
            let (k, intent) = item.map_err(store.io("read intent"))?;
            let writes = postcard::from_bytes(&intent).map_err(|e| StateError::Corrupt {
                what: "checkpoint intent",
                detail: e.to_string(),
            })?;
            store.apply_intent(&k, writes)?;
        }
        Ok(store)
    }

    /// Applies a committed intent's writes in batches of [`CHUNK`], then
    /// removes the intent (under `intent`).
    fn apply_intent(&self, intent: &[u8], writes: Writes) -> Result<(), StateError> {
        let mut writes = writes.into_iter().peekable();
        while writes.peek().is_some() {
            self.tree
                .apply_batch(batch_of(writes.by_ref().take(CHUNK)))
                .map_err(self.io("apply checkpoint"))?;
        }
        self.tree.remove(intent).map_err(self.io("remove intent"))?;
        self.db.flush().map_err(self.io("flush checkpoint"))?;
        Ok(())
    }

    /// The durable state of plugin `name` in partition `part`, for its
    /// runtime instance.
    pub fn plugin_state(&self, name: &str, part: Part) -> Arc<dyn DurableState> {
        Arc::new(PluginState {
            tree: self.tree.clone(),
            prefix: key(&[PLUGIN, name.as_bytes(), b"\0", &part.to_be_bytes()]),
            path: self.path.clone(),
        })
    }

    /// Writes partition `part`'s checkpoint `cp` atomically and makes it
    /// durable (what the pipeline does, with a changelog between).
    pub fn checkpoint(&self, part: Part, cp: Checkpoint) -> Result<(), StateError> {
        self.apply(part, cp.into_writes(part)?)
    }

    /// Applies partition `part`'s checkpoint `writes` (as
    /// [`Checkpoint::into_writes`] gives them: the metadata last) atomically
    /// and makes them durable.
    pub fn apply(&self, part: Part, mut writes: Writes) -> Result<(), StateError> {
        let meta = writes
            .pop()
            .filter(|(k, v)| *k == meta_key(part) && v.is_some());
        let Some((meta, Some(meta_value))) = meta else {
            return Err(StateError::Corrupt {
                what: "checkpoint",
                detail: format!("partition {part}'s writes do not end with its metadata"),
            });
        };
        if writes.len() < CHUNK {
            let mut batch = batch_of(writes);
            batch.insert(meta, meta_value);
            self.tree
                .apply_batch(batch)
                .map_err(self.io("apply checkpoint"))?;
            self.db.flush().map_err(self.io("flush checkpoint"))?;
            return Ok(());
        }
        let intent = key(&[INTENT, &part.to_be_bytes()]);
        let mut batch = sled::Batch::default();
        batch.insert(meta, meta_value);
        batch.insert(intent.clone(), encode("checkpoint intent", &writes)?);
        self.tree
            .apply_batch(batch)
            .map_err(self.io("commit checkpoint"))?;
        self.db.flush().map_err(self.io("flush checkpoint"))?;
        self.apply_intent(&intent, writes)
    }

    /// Replaces everything partition `part` has here with `writes`: the
    /// partition's whole state as a changelog holds it, its metadata last
    /// (none: the partition has no state).
    /// The metadata goes first and comes back last, so a crash half-way
    /// leaves a partition with no checkpoint, restored again on its next
    /// assignment.
    pub fn restore(&self, part: Part, writes: Writes) -> Result<(), StateError> {
        if let Some((k, _)) = writes.iter().find(|(k, _)| part_of_key(k) != Some(part)) {
            return Err(StateError::Corrupt {
                what: "changelog record",
                detail: format!("key {k:?} is not partition {part}'s"),
            });
        }
        self.tree
            .remove(meta_key(part))
            .map_err(self.io("remove meta"))?;
        self.db.flush().map_err(self.io("flush restore"))?;
        let mut old = Vec::new();
        for prefix in [PLUGIN, DEAD, DEDUP, REJECTED, INTENT] {
            for item in self.tree.scan_prefix(prefix) {
                let (k, _) = item.map_err(self.io("scan partition"))?;
                if part_of_key(&k) == Some(part) {
                    old.push((k.to_vec(), None));
                }
            }
        }
        let mut old = old.into_iter().peekable();
        while old.peek().is_some() {
            self.tree
                .apply_batch(batch_of(old.by_ref().take(CHUNK)))
                .map_err(self.io("clear partition"))?;
        }
        if writes.is_empty() {
            return self.flush();
        }
        self.apply(part, writes)
    }

    /// How input is split into partitions, as last recorded.
    pub fn layout(&self) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .tree
            .get(LAYOUT)
            .map_err(self.io("read layout"))?
            .map(|v| v.to_vec()))
    }

    /// Records how input is split into partitions, durably.
    pub fn set_layout(&self, layout: &[u8]) -> Result<(), StateError> {
        self.tree
            .insert(LAYOUT, layout)
            .map_err(self.io("record layout"))?;
        self.flush()
    }

    /// This data directory's static member id in a consumer group, made
    /// (random) and kept on first use.
    pub fn member_id(&self) -> Result<String, StateError> {
        if let Some(id) = self.tree.get(MEMBER).map_err(self.io("read member id"))? {
            return Ok(String::from_utf8_lossy(&id).into_owned());
        }
        let id = format!("weft-{:032x}", rand::random::<u128>());
        self.tree
            .insert(MEMBER, id.as_bytes())
            .map_err(self.io("record member id"))?;
        self.flush()?;
        Ok(id)
    }

    /// Where the group's changelog of partition `part` ended right after this
    /// store's last checkpoint of it: if it still ends there, this store is
    /// current. Not flushed by itself (a stale one only costs a restore).
    pub fn set_changelog_end(&self, part: Part, end: i64) -> Result<(), StateError> {
        self.tree
            .insert(
                key(&[CHANGELOG_END, &part.to_be_bytes()]),
                &end.to_be_bytes(),
            )
            .map_err(self.io("record changelog end"))?;
        Ok(())
    }

    pub fn changelog_end(&self, part: Part) -> Result<Option<i64>, StateError> {
        let value = self
            .tree
            .get(key(&[CHANGELOG_END, &part.to_be_bytes()]))
            .map_err(self.io("read changelog end"))?;
        Ok(value
            .and_then(|v| v.as_ref().try_into().ok())
            .map(i64::from_be_bytes))
    }

    /// The value under `key` (a full key, as a checkpoint's writes name it).
    pub fn value(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .tree
            .get(key)
            .map_err(self.io("read a value"))?
            .map(|v| v.to_vec()))
    }

    /// Partition `part`'s metadata of its last checkpoint, if any.
    pub fn meta(&self, part: Part) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .tree
            .get(meta_key(part))
            .map_err(self.io("read meta"))?
            .map(|v| v.to_vec()))
    }

    /// The partitions with a checkpoint here.
    pub fn partitions(&self) -> Result<Vec<Part>, StateError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(META) {
            let (k, _) = item.map_err(self.io("scan meta"))?;
            out.push(part_at(&k, META.len(), "meta key")?);
        }
        Ok(out)
    }

    /// Partition `part`'s dedup records: (sequence, ids with their event
    /// times).
    pub fn dedup_records(&self, part: Part) -> Result<Vec<(u64, DedupIds)>, StateError> {
        let prefix = key(&[DEDUP, &part.to_be_bytes()]);
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(&prefix) {
            let (k, v) = item.map_err(self.io("scan dedup records"))?;
            let corrupt = |detail: String| StateError::Corrupt {
                what: "dedup record",
                detail,
            };
            let seq = <[u8; 8]>::try_from(&k[prefix.len()..])
                .map(u64::from_be_bytes)
                .map_err(|_| corrupt(format!("key {k:?}")))?;
            let ids = postcard::from_bytes(&v).map_err(|e| corrupt(e.to_string()))?;
            out.push((seq, ids));
        }
        Ok(out)
    }

    /// Rejected messages after `after`, in (partition, sequence) order.
    pub fn rejected(
        &self,
        after: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<(Seq, Rejected)>, StateError> {
        self.page(REJECTED, "rejected", after, limit)?
            .into_iter()
            .map(|(seq, v)| {
                let r = Rejected::decode(&v).map_err(|e| StateError::Corrupt {
                    what: "rejected record",
                    detail: e.to_string(),
                })?;
                Ok((seq, r))
            })
            .collect()
    }

    /// Plugin `plugin`'s dead letters after `after`, in (partition,
    /// sequence) order.
    pub fn dead_letters(
        &self,
        plugin: &str,
        after: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<(Seq, Vec<u8>)>, StateError> {
        self.page(
            &key(&[DEAD, plugin.as_bytes(), b"\0"]),
            "dead letters",
            after,
            limit,
        )
    }

    /// At most `limit` records under `prefix` (then partition and
    /// sequence) after `after`.
    fn page(
        &self,
        prefix: &[u8],
        what: &'static str,
        after: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<(Seq, Vec<u8>)>, StateError> {
        let start = match after {
            Some(Seq { part, seq }) => match seq.checked_add(1) {
                Some(next) => key(&[prefix, &part.to_be_bytes(), &next.to_be_bytes()]),
                None => key(&[prefix, &(part + 1).to_be_bytes()]),
            },
            None => prefix.to_vec(),
        };
        let mut out = Vec::new();
        for item in self.tree.range(start..).take(limit) {
            let (k, v) = item.map_err(self.io("scan records"))?;
            let Some(rest) = k.strip_prefix(prefix) else {
                break;
            };
            let seq = <[u8; 12]>::try_from(rest).map_err(|_| StateError::Corrupt {
                what,
                detail: format!("key {k:?}"),
            })?;
            let (part, seq) = seq.split_at(4);
            out.push((
                Seq {
                    part: Part::from_be_bytes(part.try_into().expect("4 bytes")),
                    seq: u64::from_be_bytes(seq.try_into().expect("8 bytes")),
                },
                v.to_vec(),
            ));
        }
        Ok(out)
    }

    /// How many dead letters plugin `plugin` has in partition `part`.
    pub fn count_dead_letters(&self, plugin: &str, part: Part) -> Result<u64, StateError> {
        let prefix = key(&[DEAD, plugin.as_bytes(), b"\0", &part.to_be_bytes()]);
        let mut n = 0;
        for item in self.tree.scan_prefix(prefix) {
            item.map_err(self.io("count dead letters"))?;
            n += 1;
        }
        Ok(n)
    }

    /// Keeps a component's bytes under its digest, durably.
    pub fn put_module(&self, digest: &str, bytes: &[u8]) -> Result<(), StateError> {
        let k = key(&[MODULE, digest.as_bytes()]);
        if !self
            .tree
            .contains_key(&k)
            .map_err(self.io("look up module"))?
        {
            self.tree
                .insert(k, bytes)
                .map_err(self.io("store module"))?;
            self.db.flush().map_err(self.io("flush module"))?;
        }
        Ok(())
    }

    /// The component stored under `digest`.
    pub fn module(&self, digest: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .tree
            .get(key(&[MODULE, digest.as_bytes()]))
            .map_err(self.io("read module"))?
            .map(|v| v.to_vec()))
    }

    /// Records what runs under instance `name`. Durable with the next
    /// checkpoint (or [`Store::flush`]).
    pub fn put_instance(&self, name: &str, record: &[u8]) -> Result<(), StateError> {
        self.tree
            .insert(key(&[INSTANCE, name.as_bytes()]), record)
            .map_err(self.io("record instance"))?;
        Ok(())
    }

    /// The record of instance `name`.
    pub fn instance(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .tree
            .get(key(&[INSTANCE, name.as_bytes()]))
            .map_err(self.io("read instance"))?
            .map(|v| v.to_vec()))
    }

    /// Every instance record: (name, record).
    pub fn instances(&self) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(INSTANCE) {
            let (k, v) = item.map_err(self.io("scan instances"))?;
            let name = String::from_utf8_lossy(&k[INSTANCE.len()..]).into_owned();
            out.push((name, v.to_vec()));
        }
        Ok(out)
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush().map_err(self.io("flush"))?;
        Ok(())
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Bytes of every key and value stored: the logical size of the state,
    /// which [`Store::size_on_disk`] is judged against.
    pub fn logical_size(&self) -> u64 {
        self.tree
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }
}

/// A record's place: its partition and its sequence number there. Shown as
/// `{part}.{seq}` (the cursor of paged listings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seq {
    pub part: Part,
    pub seq: u64,
}

impl std::fmt::Display for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.part, self.seq)
    }
}

impl std::str::FromStr for Seq {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not a cursor (`{{partition}}.{{sequence}}`, as `next` gives)");
        let (part, seq) = s.split_once('.').ok_or_else(bad)?;
        Ok(Seq {
            part: part.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// The partition in key `k` at `at`.
fn part_at(k: &[u8], at: usize, what: &'static str) -> Result<Part, StateError> {
    k.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(Part::from_be_bytes)
        .ok_or_else(|| StateError::Corrupt {
            what,
            detail: format!("key {k:?}"),
        })
}

/// One plugin's namespace of the tree.
struct PluginState {
    tree: sled::Tree,
    prefix: Vec<u8>,
    /// The store's directory, named in errors.
    path: Arc<Path>,
}

impl DurableState for PluginState {
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .tree
            .get(key(&[&self.prefix, k]))
            .map_err(io(&self.path, "read plugin state"))?
            .map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StateError> {
        let full_prefix = key(&[&self.prefix, prefix]);
        let iter = match after {
            Some(a) => {
                let mut start = key(&[&self.prefix, a]);
                start.push(0); // the smallest key strictly after `a`
                self.tree.range(start..)
            }
            None => self.tree.range(full_prefix.clone()..),
        };
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(io(&self.path, "scan plugin state"))?;
            if !k.starts_with(&full_prefix) || out.len() == limit {
                break;
            }
            out.push((k[self.prefix.len()..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(offset: i64) -> Rejected {
        Rejected::keeping("not_json", "d".into(), 0, offset, vec![0xff, b'{'], 64)
    }

    #[test]
    fn a_long_rejected_message_keeps_a_prefix_its_length_and_digest() {
        let raw: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let r = Rejected::keeping("not_json", "d".into(), 0, 7, raw.clone(), 1000);
        assert_eq!(r.raw, raw[..1000]);
        assert_eq!(r.raw_len, 100_000);
        assert_eq!(r.raw_sha256, Some(hex::encode(Sha256::digest(&raw))));
        let short = Rejected::keeping("not_json", "d".into(), 0, 7, raw[..1000].to_vec(), 1000);
        assert_eq!(
            (short.raw.len(), short.raw_len, short.raw_sha256),
            (1000, 1000, None)
        );
    }

    #[test]
    fn rejected_records_of_the_earlier_layout_still_decode() {
        #[derive(Serialize)]
        struct Before<'a> {
            reason: &'a str,
            detail: &'a str,
            partition: i32,
            offset: i64,
            raw: &'a [u8],
        }
        let bytes = postcard::to_allocvec(&Before {
            reason: "late",
            detail: "d",
            partition: 2,
            offset: 9,
            raw: b"{}",
        })
        .unwrap();
        let r = Rejected::decode(&bytes).unwrap();
        assert_eq!(
            r,
            Rejected::keeping("late", "d".into(), 2, 9, b"{}".to_vec(), 64)
        );
    }

    /// Opens the store at `dir` again once sled has let go of it: a dropped
    /// `Db` releases its file lock from a background thread, a moment later.
    fn reopen(dir: &Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(dir) {
                Ok(store) => return store,
                Err(e) if std::time::Instant::now() > deadline => panic!("reopen: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
    }

    /// `n` writes of plugin state: key `k{i}` (zero-padded), value `round`
    /// and `i`; every third removed instead when `removes`.
    fn many(n: usize, round: u8, removes: bool) -> Vec<Write> {
        (0..n)
            .map(|i| {
                let k = format!("k{i:06}").into_bytes();
                let v = (!(removes && i % 3 == 0)).then(|| vec![round, (i % 251) as u8]);
                (k, v)
            })
            .collect()
    }

    #[test]
    fn a_checkpoint_larger_than_one_batch_is_complete() {
        let dir = tempfile::tempdir().unwrap();
        let n = CHUNK * 3 + 7;
        {
            let store = Store::open(dir.path()).unwrap();
            for (round, removes) in [(1, false), (2, true)] {
                store
                    .checkpoint(
                        3,
                        Checkpoint {
                            plugin_writes: vec![("a".into(), many(n, round, removes))],
                            meta: vec![round],
                            ..Checkpoint::default()
                        },
                    )
                    .unwrap();
            }
            assert_eq!(
                store.tree.get(key(&[INTENT, &3u32.to_be_bytes()])).unwrap(),
                None,
                "the intent is gone"
            );
        }
        let store = reopen(dir.path());
        assert_eq!(store.meta(3).unwrap(), Some(vec![2]));
        let want: Vec<(Vec<u8>, Vec<u8>)> = many(n, 2, true)
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        assert_eq!(store.plugin_state("a", 3).scan(b"", None, n).unwrap(), want);
    }

    #[test]
    fn opening_finishes_an_interrupted_large_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let n = CHUNK * 2 + 1;
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .checkpoint(
                    3,
                    Checkpoint {
                        plugin_writes: vec![("a".into(), many(n, 1, false))],
                        meta: vec![1],
                        ..Checkpoint::default()
                    },
                )
                .unwrap();
            // What a crash right after the commit of the second leaves: its
            // intent and metadata, none of its writes applied.
            let writes: Writes = many(n, 2, true)
                .into_iter()
                .map(|(k, v)| (key(&[PLUGIN, b"a\0", &3u32.to_be_bytes(), &k]), v))
                .collect();
            let mut batch = sled::Batch::default();
            batch.insert(
                key(&[INTENT, &3u32.to_be_bytes()]),
                encode("intent", &writes).unwrap(),
            );
            batch.insert(key(&[META, &3u32.to_be_bytes()]), vec![2]);
            store.tree.apply_batch(batch).unwrap();
            store.flush().unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(store.meta(3).unwrap(), Some(vec![2]));
        assert_eq!(
            store.tree.get(key(&[INTENT, &3u32.to_be_bytes()])).unwrap(),
            None
        );
        let a = store.plugin_state("a", 3);
        assert_eq!(a.get(b"k000000").unwrap(), None, "removed by the intent");
        assert_eq!(a.get(b"k000001").unwrap(), Some(vec![2, 1]));
        assert_eq!(a.scan(b"", None, n).unwrap().len(), n - n.div_ceil(3));
    }

    #[test]
    fn a_checkpoint_is_durable_and_namespaced() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .checkpoint(
                    3,
                    Checkpoint {
                        plugin_writes: vec![
                            (
                                "a".into(),
                                vec![
                                    (b"k1".to_vec(), Some(b"v1".to_vec())),
                                    (b"k2".to_vec(), Some(b"v2".to_vec())),
                                ],
                            ),
                            ("ab".into(), vec![(b"k1".to_vec(), Some(b"other".to_vec()))]),
                        ],
                        dedup_added: Some((0, vec![("e1".into(), 10), ("e2".into(), 20)])),
                        rejected: vec![(1, rejected(5)), (2, rejected(9))],
                        dead_letters: vec![
                            ("a".into(), 1, b"d1".to_vec()),
                            ("a".into(), 2, b"d2".to_vec()),
                            ("ab".into(), 1, b"x".to_vec()),
                        ],
                        meta: b"meta-1".to_vec(),
                        ..Checkpoint::default()
                    },
                )
                .unwrap();
            store
                .checkpoint(
                    3,
                    Checkpoint {
                        plugin_writes: vec![("a".into(), vec![(b"k2".to_vec(), None)])],
                        dedup_added: Some((1, vec![("e3".into(), 30)])),
                        dedup_removed: vec![0],
                        dead_letters_removed: vec![("a".into(), 1)],
                        meta: b"meta-2".to_vec(),
                        ..Checkpoint::default()
                    },
                )
                .unwrap();
        }
        let store = reopen(dir.path());
        assert_eq!(store.meta(3).unwrap(), Some(b"meta-2".to_vec()));
        assert_eq!(
            store.dedup_records(3).unwrap(),
            vec![(1, vec![("e3".to_string(), 30)])]
        );
        let a = store.plugin_state("a", 3);
        assert_eq!(a.get(b"k1").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(a.get(b"k2").unwrap(), None);
        assert_eq!(
            a.scan(b"", None, 10).unwrap(),
            vec![(b"k1".to_vec(), b"v1".to_vec())],
            "`ab` is another namespace"
        );
        assert_eq!(
            store.plugin_state("ab", 3).get(b"k1").unwrap(),
            Some(b"other".to_vec())
        );
        let at = |seq| Seq { part: 3, seq };
        let all = store.rejected(None, 10).unwrap();
        assert_eq!(all, vec![(at(1), rejected(5)), (at(2), rejected(9))]);
        assert_eq!(
            store.rejected(Some(at(1)), 10).unwrap(),
            vec![(at(2), rejected(9))]
        );
        assert_eq!(store.rejected(None, 1).unwrap().len(), 1);
        assert_eq!(
            store.dead_letters("a", None, 10).unwrap(),
            vec![(at(2), b"d2".to_vec())],
            "the first was replayed"
        );
        assert_eq!(store.dead_letters("a", Some(at(2)), 10).unwrap(), vec![]);
        assert_eq!(store.count_dead_letters("a", 3).unwrap(), 1);
        assert_eq!(store.count_dead_letters("a", 4).unwrap(), 0);
        assert_eq!(
            store.dead_letters("ab", None, 10).unwrap(),
            vec![(at(1), b"x".to_vec())]
        );
        assert_eq!(store.partitions().unwrap(), vec![3]);
        assert_eq!(store.meta(4).unwrap(), None);
        assert_eq!(store.plugin_state("a", 4).get(b"k1").unwrap(), None);
    }

    #[test]
    fn a_restore_replaces_one_partition_and_leaves_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cp = |k: &[u8], meta: &[u8]| Checkpoint {
            plugin_writes: vec![("a".into(), vec![(k.to_vec(), Some(b"v".to_vec()))])],
            rejected: vec![(1, rejected(5))],
            dead_letters: vec![("a".into(), 1, b"d".to_vec())],
            meta: meta.to_vec(),
            ..Checkpoint::default()
        };
        // 256's partition bytes hold a NUL: keys must still be told apart.
        for part in [1, 256] {
            store.checkpoint(part, cp(b"old", b"m-old")).unwrap();
        }
        let changelog = cp(b"new", b"m-new").into_writes(256).unwrap();
        assert_eq!(changelog.last().unwrap().0, meta_key(256));
        store.restore(256, changelog).unwrap();
        drop(store);
        let store = reopen(dir.path());
        let (a1, a256) = (store.plugin_state("a", 1), store.plugin_state("a", 256));
        assert_eq!(a256.get(b"old").unwrap(), None, "replaced");
        assert_eq!(a256.get(b"new").unwrap(), Some(b"v".to_vec()));
        assert_eq!(a1.get(b"old").unwrap(), Some(b"v".to_vec()), "kept");
        assert_eq!(store.meta(256).unwrap(), Some(b"m-new".to_vec()));
        assert_eq!(store.meta(1).unwrap(), Some(b"m-old".to_vec()));
        assert_eq!(store.count_dead_letters("a", 256).unwrap(), 1);
        assert_eq!(store.rejected(None, 10).unwrap().len(), 2);
        let foreign = cp(b"k", b"m").into_writes(1).unwrap();
        assert!(matches!(
            store.restore(256, foreign),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn partitions_are_apart_and_listings_run_across_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for part in [0u32, 1, 256] {
            store
                .checkpoint(
                    part,
                    Checkpoint {
                        plugin_writes: vec![(
                            "a".into(),
                            vec![(b"k".to_vec(), Some(vec![part as u8]))],
                        )],
                        rejected: vec![(1, rejected(1)), (u64::MAX, rejected(2))],
                        meta: vec![part as u8],
                        ..Checkpoint::default()
                    },
                )
                .unwrap();
        }
        assert_eq!(store.partitions().unwrap(), vec![0, 1, 256]);
        assert_eq!(store.plugin_state("a", 1).get(b"k").unwrap(), Some(vec![1]));
        let seqs = |after| -> Vec<String> {
            store
                .rejected(after, 100)
                .unwrap()
                .iter()
                .map(|(s, _)| s.to_string())
                .collect()
        };
        let max = u64::MAX;
        assert_eq!(
            seqs(None),
            [
                "0.1",
                &format!("0.{max}"),
                "1.1",
                &format!("1.{max}"),
                "256.1",
                &format!("256.{max}")
            ]
        );
        let cursor: Seq = format!("0.{max}").parse().unwrap();
        assert_eq!(
            seqs(Some(cursor))[0],
            "1.1",
            "after a partition's last sequence comes the next partition"
        );
        assert!("7".parse::<Seq>().is_err());
    }

    #[test]
    fn the_layout_before_partitions_is_refused_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.tree.insert(OLD_META, b"{}".to_vec()).unwrap();
            store.flush().unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let error = loop {
            match Store::open(dir.path()) {
                Err(StateError::OldLayout(_)) => break Store::open(dir.path()).err().unwrap(),
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                other => panic!("{:?}", other.map(|_| ())),
            }
        };
        assert!(error.to_string().contains("new data directory"), "{error}");
    }

    #[test]
    fn pending_writes_overlay_durable_state_in_scans() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let durable: Vec<_> = [b"p1", b"p2", b"p3", b"q1"]
            .iter()
            .map(|k| (k.to_vec(), Some(b"old".to_vec())))
            .collect();
        store
            .checkpoint(
                3,
                Checkpoint {
                    plugin_writes: vec![("x".into(), durable)],
                    ..Checkpoint::default()
                },
            )
            .unwrap();
        let mut pending = PendingState::new(store.plugin_state("x", 3));
        pending.delete(b"p2".to_vec());
        pending.set(b"p4".to_vec(), b"new".to_vec());
        pending.set(b"p1".to_vec(), b"new".to_vec());
        let keys = |entries: Vec<(Vec<u8>, Vec<u8>)>| -> Vec<(String, String)> {
            entries
                .into_iter()
                .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
                .collect()
        };
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            keys(pending.scan(b"p", None, 10).unwrap()),
            vec![p("p1", "new"), p("p3", "old"), p("p4", "new")]
        );
        assert_eq!(
            keys(pending.scan(b"p", Some(b"p1"), 1).unwrap()),
            vec![p("p3", "old")]
        );
        assert_eq!(pending.get(b"p2").unwrap(), None);
        assert_eq!(pending.drain().len(), 3);
        assert_eq!(pending.pending(), 0);
    }

    #[test]
    fn a_failed_read_is_an_error_not_an_absent_value() {
        struct Failing;
        impl DurableState for Failing {
            fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
                Err(StateError::Corrupt {
                    what: "test",
                    detail: "the disk is gone".into(),
                })
            }
            fn scan(&self, _: &[u8], _: Option<&[u8]>, _: usize) -> Result<Entries, StateError> {
                self.get(b"").map(|_| Vec::new())
            }
        }
        let mut pending = PendingState::new(Arc::new(Failing));
        assert!(pending.get(b"k").is_err());
        assert!(pending.scan(b"", None, 10).is_err());
        // A pending write is answered without the durable store.
        pending.set(b"k".to_vec(), b"v".to_vec());
        assert_eq!(pending.get(b"k").unwrap(), Some(b"v".to_vec()));
    }
}
