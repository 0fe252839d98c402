//! Many hosts in one Kafka consumer group: each owns the partitions the
//! group assigns it, and a partition's state moves with it through the
//! group's changelog.
//!
//! - **Changelog.** Every checkpoint of a partition is first appended to
//!   its changelog partition (the checkpoint's writes by key, its metadata
//!   last, so the metadata record marks a whole checkpoint), then applied
//!   to the local store. A partition assigned here is restored before a
//!   single event of it is read: if the local store's metadata is the
//!   changelog's last, it is current and stays; otherwise the partition is
//!   replaced by the changelog's state up to its last metadata record. (A
//!   store that recorded the changelog's end after its last checkpoint, and
//!   finds it still ends there, is current without reading it.)
//!   Records after that one are a checkpoint cut short (its writer died
//!   mid-append): they are not applied, and the restoring host appends the
//!   restored values of their keys and the metadata again, so the
//!   changelog, read (or compacted) key by key, again ends in a whole
//!   checkpoint.
//! - **Hand-over.** A partition revoked from this host writes a last
//!   checkpoint before the group may give it to another ([`Owner::revoked`],
//!   inside the rebalance), so its new owner restores everything this host
//!   did, whatever the assignment strategy.
//! - **Members.** Each host keeps a record in the group's members topic:
//!   its HTTP address and its partitions. A query on any host asks the
//!   owners of the partitions it does not have ([`Shared::owners`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use weft_source::{Group, Identity, Logged, Offsets, Rebalance, Record};
use weft_state::{Part, Store, meta_key};

use crate::{
    PipelineError, Settings, Shared, Work, lock,
    partition::{Committed, Partition},
};

/// A member re-announces itself this often...
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
/// ...and is taken for gone when not heard from for this long (killed; a
/// clean stop removes its record at once).
const MEMBER_TIMEOUT: Duration = Duration::from_secs(10);

/// This host in its group.
pub(crate) struct Membership {
    pub(crate) group: Group,
    pub(crate) name: String,
    /// This host's member id (its static group member id).
    pub(crate) me: String,
    /// Where other hosts reach this one's HTTP API.
    pub(crate) url: String,
    /// The members heard from: id → when, and their record.
    pub(crate) members: Mutex<BTreeMap<String, (Instant, Vec<u8>)>>,
    /// Set when this host's partitions change, to announce them at once.
    pub(crate) changed: AtomicBool,
    /// Restores in progress: partition → (records read, of).
    pub(crate) restoring: Mutex<BTreeMap<Part, (u64, u64)>>,
    /// Partitions restored from the changelog since the start.
    pub(crate) restored: AtomicU64,
    pub(crate) last_restore: Mutex<Option<RestoreDone>>,
    /// The partitions this host may write the changelog of: its claims.
    writers: Mutex<BTreeMap<Part, Writer>>,
    pub(crate) stop: AtomicBool,
}

/// A member's record in the members topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberRecord {
    pub url: String,
    pub partitions: Vec<Part>,
}

/// The group in `GET /api/status`.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    pub group: String,
    /// The input topic's partitions: what a whole answer covers.
    pub topic_partitions: u32,
    pub members: Vec<MemberStatus>,
    pub restoring: Vec<RestoreStatus>,
    /// Partitions restored from the changelog since this host started.
    pub restored: u64,
    /// The latest of those restores.
    pub last_restore: Option<RestoreDone>,
}

/// A partition restored from the changelog.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreDone {
    pub partition: Part,
    /// Changelog records read, and their keys' and values' bytes.
    pub records: u64,
    pub bytes: u64,
    /// Keys the partition's state has after it.
    pub keys: u64,
    /// From asking for the changelog's end to the state written here.
    pub ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub id: String,
    pub url: String,
    pub partitions: Vec<Part>,
    /// Whether it is this host.
    pub me: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreStatus {
    pub partition: Part,
    /// Changelog records read...
    pub read: u64,
    /// ...of this many.
    pub total: u64,
}

/// Who answers for which partitions, for a query over the whole group.
pub struct Owners {
    /// Every partition of the input topic.
    pub all: BTreeSet<Part>,
    /// The other live members: their HTTP address and partitions.
    pub others: Vec<(String, Vec<Part>)>,
}

impl Membership {
    pub(crate) fn new(group: Group, name: String, me: String, url: String) -> Self {
        Membership {
            group,
            name,
            me,
            url,
            members: Mutex::default(),
            changed: AtomicBool::new(true),
            restoring: Mutex::default(),
            restored: AtomicU64::new(0),
            last_restore: Mutex::default(),
            writers: Mutex::default(),
            stop: AtomicBool::new(false),
        }
    }

    /// The members heard from lately, by id.
    fn live(&self) -> Vec<(String, MemberRecord)> {
        let mut members = lock(&self.members);
        members.retain(|_, (at, _)| at.elapsed() < MEMBER_TIMEOUT);
        members
            .iter()
            .filter_map(|(id, (_, bytes))| Some((id.clone(), serde_json::from_slice(bytes).ok()?)))
            .collect()
    }

    pub(crate) fn status(&self, mine: &[Part]) -> GroupStatus {
        let mut members: Vec<MemberStatus> = self
            .live()
            .into_iter()
            .filter(|(id, _)| *id != self.me)
            .map(|(id, r)| MemberStatus {
                id,
                url: r.url,
                partitions: r.partitions,
                me: false,
            })
            .collect();
        members.push(MemberStatus {
            id: self.me.clone(),
            url: self.url.clone(),
            partitions: mine.to_vec(),
            me: true,
        });
        members.sort_by(|a, b| a.id.cmp(&b.id));
        GroupStatus {
            group: self.name.clone(),
            topic_partitions: self.group.partitions() as u32,
            members,
            restoring: lock(&self.restoring)
                .iter()
                .map(|(&partition, &(read, total))| RestoreStatus {
                    partition,
                    read,
                    total,
                })
                .collect(),
            restored: self.restored.load(Ordering::Relaxed),
            last_restore: lock(&self.last_restore).clone(),
        }
    }

    pub(crate) fn owners(&self) -> Owners {
        Owners {
            all: (0..self.group.partitions() as Part).collect(),
            others: self
                .live()
                .into_iter()
                .filter(|(id, _)| *id != self.me)
                .map(|(_, r)| (r.url, r.partitions))
                .collect(),
        }
    }

    /// Announces this host in the members topic until the pipeline stops.
    pub(crate) fn announce(
        shared: &Arc<Shared>,
    ) -> Result<std::thread::JoinHandle<()>, PipelineError> {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("weft-members".into())
            .spawn(move || {
                let Some(m) = shared.group.get() else { return };
                let record = || {
                    let record = MemberRecord {
                        url: m.url.clone(),
                        partitions: shared.part_ids(),
                    };
                    serde_json::to_vec(&record).unwrap_or_default()
                };
                if let Err(e) = m.group.members(&m.me, ANNOUNCE_EVERY, &record, &m.changed, &m.members, &m.stop) {
                    tracing::warn!(error = %e, "The members topic failed: queries on other hosts cannot reach this one.");
                }
            })
            .map_err(PipelineError::Thread)
    }
}

/// The changelog key of `writer`'s claim on `part`: `c\0{part}{writer}`,
/// never a state key, and distinct per claim so compaction keeps them all.
fn claim_key(part: Part, writer: u64) -> Vec<u8> {
    [
        b"c\0".as_slice(),
        &part.to_be_bytes(),
        &writer.to_be_bytes(),
    ]
    .concat()
}

/// Whether `key` is a claim on `part`.
fn is_claim(part: Part, key: &[u8]) -> bool {
    key.len() == 14 && key.starts_with(b"c\0") && key[2..6] == part.to_be_bytes()
}

/// Which of changelog partition `part`'s `records` (in offset order) count
/// as state. A claim names its writer and the end of the changelog its
/// writer read before it (its value, i64 BE): each writer's records count
/// from its claim until the first end read by a later claimer (what a later
/// owner did not see, it did not restore, and so it never happened);
/// records without a writer (written before writers were named) count until
/// the first claim's end. Claims themselves are not state.
fn valid(part: Part, records: &[Logged]) -> Vec<bool> {
    let mut windows: BTreeMap<u64, (i64, i64)> = BTreeMap::new();
    let mut until = i64::MAX;
    for r in records.iter().rev() {
        if let (true, Some(writer), Some(v)) = (is_claim(part, &r.key), r.writer, &r.value) {
            let from = v.as_slice().try_into().map_or(r.offset, i64::from_be_bytes);
            windows.entry(writer).or_insert((r.offset, until));
            until = until.min(from);
        }
    }
    records
        .iter()
        .map(|r| {
            let (start, end) = match r.writer {
                Some(w) => windows.get(&w).copied().unwrap_or((i64::MAX, i64::MAX)),
                None => (-1, until),
            };
            !is_claim(part, &r.key) && start < r.offset && r.offset < end
        })
        .collect()
}

/// This host's right to write a partition's changelog: its claim, and the
/// changelog's end after its last write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Writer {
    id: u64,
    claim: i64,
    end: i64,
}

impl Membership {
    /// Claims changelog partition `part` as writer `id`, having read it to
    /// `from`, with `repair` right after the claim; the store's state is
    /// what the changelog says then.
    fn claim(
        &self,
        store: &Store,
        part: Part,
        id: u64,
        from: i64,
        repair: Vec<Record>,
    ) -> Result<(), PipelineError> {
        let mut records = vec![(claim_key(part, id), Some(from.to_be_bytes().to_vec()))];
        records.extend(repair);
        let offsets = self.group.write(part as i32, id, &records)?;
        let writer = Writer {
            id,
            claim: offsets[0],
            end: from,
        };
        lock(&self.writers).insert(part, writer);
        let end = self.settle(store, part, writer, &offsets, &records)?;
        store.set_changelog_end(part, end)?;
        Ok(())
    }

    /// Appends a checkpoint's `records` to changelog partition `part`;
    /// returns the changelog's end after them. [`PipelineError::Fenced`] if
    /// another host claimed the partition since this one did.
    pub(crate) fn append(
        &self,
        store: &Store,
        part: Part,
        records: &[Record],
    ) -> Result<i64, PipelineError> {
        let writer = lock(&self.writers)
            .get(&part)
            .copied()
            .ok_or(PipelineError::Fenced(part))?;
        let offsets = self.group.write(part as i32, writer.id, records)?;
        self.settle(store, part, writer, &offsets, records)
    }

    /// Checks that `writer`'s write of `records` at `offsets` is the only
    /// thing appended since its last one. A later claim means this host no
    /// longer owns the partition: it is fenced. Anything else is a host
    /// that owned it before and has not noticed yet: what it wrote does not
    /// count, and its keys are written again after it, so the changelog
    /// read (or compacted) key by key ends in this host's values.
    fn settle(
        &self,
        store: &Store,
        part: Part,
        mut writer: Writer,
        offsets: &[i64],
        records: &[Record],
    ) -> Result<i64, PipelineError> {
        let mut offsets = offsets.to_vec();
        loop {
            let alone = offsets
                .iter()
                .enumerate()
                .all(|(i, &o)| o == writer.end + i as i64);
            if alone {
                writer.end += offsets.len() as i64;
                break;
            }
            let (seen, high) = self
                .group
                .read(part as i32, Some(writer.end), &mut |_, _| {})?;
            let mut strays = BTreeSet::new();
            for r in seen.iter().filter(|r| r.writer != Some(writer.id)) {
                if !is_claim(part, &r.key) {
                    strays.insert(r.key.clone());
                } else if r.offset > writer.claim {
                    lock(&self.writers).remove(&part);
                    return Err(PipelineError::Fenced(part));
                }
            }
            writer.end = high;
            if strays.is_empty() {
                break;
            }
            tracing::warn!(
                partition = part,
                keys = strays.len(),
                "A host that owned this partition before wrote to its changelog after this one took it; its writes do not count and are overwritten."
            );
            let meta = meta_key(part);
            let mut rewrite = Vec::with_capacity(strays.len());
            for key in strays
                .iter()
                .filter(|k| **k != meta)
                .chain(strays.get(&meta))
            {
                let value = match records.iter().rev().find(|(k, _)| k == key) {
                    Some((_, v)) => v.clone(),
                    None => store.value(key)?,
                };
                rewrite.push((key.clone(), value));
            }
            offsets = self.group.write(part as i32, writer.id, &rewrite)?;
        }
        if let Some(w) = lock(&self.writers)
            .get_mut(&part)
            .filter(|w| w.id == writer.id)
        {
            w.end = writer.end;
        }
        Ok(writer.end)
    }
}

/// Makes partition `part`'s local state current with the changelog and
/// claims it for this host; true if it was restored from it.
fn restore(shared: &Shared, m: &Membership, part: Part) -> Result<bool, PipelineError> {
    let started = Instant::now();
    let store = &shared.store;
    let writer = rand::random::<u64>();
    // Nothing was appended since this store's last checkpoint: current,
    // without reading the changelog.
    let end = m.group.end(part as i32)?;
    if end > 0 && store.changelog_end(part)? == Some(end) && store.meta(part)?.is_some() {
        m.claim(store, part, writer, end, Vec::new())?;
        tracing::info!(
            partition = part,
            "Partition state here is the changelog's last."
        );
        return Ok(false);
    }
    lock(&m.restoring).insert(part, (0, 0));
    let read = m.group.read(part as i32, None, &mut |read, total| {
        lock(&m.restoring).insert(part, (read, total));
    });
    lock(&m.restoring).remove(&part);
    let (records, end) = read?;
    let valid = valid(part, &records);
    let meta = meta_key(part);
    let last_meta = (0..records.len())
        .rev()
        .find(|&i| valid[i] && records[i].key == meta && records[i].value.is_some());
    let whole = last_meta.map_or(0, |i| i + 1);
    let mut state: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for r in records[..whole]
        .iter()
        .zip(&valid)
        .filter(|(_, ok)| **ok)
        .map(|(r, _)| r)
    {
        match &r.value {
            Some(v) => state.insert(r.key.clone(), v.clone()),
            None => state.remove(&r.key),
        };
    }
    let last = state.remove(&meta);
    let current = last.is_some() && last == store.meta(part)?;
    if !current {
        let mut writes: Vec<Record> = state
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        if let Some(last) = &last {
            writes.push((meta.clone(), Some(last.clone())));
        }
        store.restore(part, writes)?;
    }
    // Written again after the claim: the keys of a checkpoint cut short
    // (its writer died mid-append) and those whose last record does not
    // count, so the changelog read (or compacted) key by key ends in the
    // restored state.
    let mut last_counts: BTreeMap<&[u8], bool> = BTreeMap::new();
    for (r, &ok) in records.iter().zip(&valid) {
        if !is_claim(part, &r.key) {
            last_counts.insert(&r.key, ok);
        }
    }
    let mut keys: BTreeSet<&[u8]> = records[whole..]
        .iter()
        .zip(&valid[whole..])
        .filter(|(_, ok)| **ok)
        .map(|(r, _)| r.key.as_slice())
        .collect();
    keys.extend(last_counts.iter().filter(|(_, ok)| !**ok).map(|(k, _)| *k));
    let mut repair: Vec<Record> = keys
        .iter()
        .filter(|k| **k != meta.as_slice())
        .map(|k| (k.to_vec(), state.get(*k).cloned()))
        .collect();
    if !keys.is_empty() {
        tracing::warn!(
            partition = part,
            keys = keys.len(),
            "The changelog ends in a checkpoint cut short or in writes that do not count; they are not applied and are overwritten."
        );
        repair.push((meta, last.clone()));
    }
    m.claim(store, part, writer, end, repair)?;
    if last.is_none() {
        tracing::info!(
            partition = part,
            "Partition has no checkpoint in the changelog yet."
        );
        return Ok(false);
    }
    if current {
        tracing::info!(
            partition = part,
            records = records.len(),
            "Partition state here is the changelog's last."
        );
        return Ok(false);
    }
    let done = RestoreDone {
        partition: part,
        records: records.len() as u64,
        bytes: records
            .iter()
            .map(|r| (r.key.len() + r.value.as_ref().map_or(0, Vec::len)) as u64)
            .sum(),
        keys: state.len() as u64,
        ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(
        partition = part,
        records = done.records,
        bytes = done.bytes,
        keys = done.keys,
        ms = done.ms,
        "Partition restored from the changelog."
    );
    *lock(&m.last_restore) = Some(done);
    m.restored.fetch_add(1, Ordering::Relaxed);
    shared.telemetry.restores.inc();
    Ok(true)
}

/// The partitions this host works on, shared by the reader and the
/// rebalance owner: each partition's worker queue, and which are open.
pub(crate) struct Router {
    /// Empty once the pipeline stops: the workers have checkpointed then.
    pub(crate) queues: Mutex<Vec<mpsc::SyncSender<Work>>>,
    pub(crate) open: Mutex<BTreeSet<Part>>,
}

impl Router {
    /// Hands `work` for `part` to its worker; false if it has stopped.
    pub(crate) fn send(&self, part: Part, work: Work) -> bool {
        let queue = {
            let queues = lock(&self.queues);
            if queues.is_empty() {
                return false;
            }
            queues[part as usize % queues.len()].clone()
        };
        queue.send(work).is_ok()
    }
}

/// Takes and gives up partitions when the group moves them.
pub(crate) struct Owner {
    pub(crate) settings: Settings,
    pub(crate) shared: Arc<Shared>,
    pub(crate) router: Arc<Router>,
    pub(crate) commits: mpsc::Sender<Committed>,
    pub(crate) identity: Identity,
}

impl Owner {
    fn take(&self, part: Part) -> Result<Option<i64>, PipelineError> {
        if let Some(m) = self.shared.group.get() {
            match restore(&self.shared, m, part) {
                // Another host claimed it right after this one: it is theirs.
                Err(e @ PipelineError::Fenced(_)) => {
                    tracing::warn!(partition = part, "{e}");
                    return Ok(None);
                }
                r => r?,
            };
        }
        let (partition, resume) =
            Partition::open(part, &self.settings, &self.shared, self.commits.clone())?;
        if let Some(last) = resume.source.as_ref().filter(|l| **l != self.identity) {
            return Err(last.changed(&self.identity).into());
        }
        self.shared.adopt(&partition.view);
        lock(&self.router.open).insert(part);
        self.router.send(part, Work::Adopt(Box::new(partition)));
        Ok(resume.offsets.get(&(part as i32)).copied())
    }
}

impl Rebalance for Owner {
    fn assigned(&mut self, partitions: &[i32]) -> Result<Offsets, String> {
        let mut resume = Offsets::new();
        for &p in partitions {
            if let Some(next) = self
                .take(p as Part)
                .map_err(|e| format!("cannot take partition {p}: {e}"))?
            {
                resume.insert(p, next);
            }
            tracing::info!(partition = p, next = ?resume.get(&p), "Partition taken.");
        }
        if let Some(m) = self.shared.group.get() {
            m.changed.store(true, Ordering::Release);
        }
        Ok(resume)
    }

    fn revoked(&mut self, partitions: &[i32]) -> Result<(), String> {
        for &p in partitions {
            let part = p as Part;
            if !lock(&self.router.open).remove(&part) {
                continue;
            }
            let (done, checkpointed) = mpsc::channel();
            // A worker that has stopped checkpointed everything it had.
            if self.router.send(part, Work::Release(part, done)) && checkpointed.recv().is_err() {
                return Err(format!(
                    "partition {p}'s worker failed before its last checkpoint"
                ));
            }
            self.shared.forget(part);
            if let Some(m) = self.shared.group.get() {
                lock(&m.writers).remove(&part);
            }
            tracing::info!(partition = p, "Partition handed over.");
        }
        if let Some(m) = self.shared.group.get() {
            m.changed.store(true, Ordering::Release);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Part = 3;

    fn put(offset: i64, writer: Option<u64>) -> Logged {
        Logged {
            offset,
            key: b"p\0k".to_vec(),
            value: Some(vec![1]),
            writer,
        }
    }

    fn claim(offset: i64, writer: u64, from: i64) -> Logged {
        Logged {
            offset,
            key: claim_key(P, writer),
            value: Some(from.to_be_bytes().to_vec()),
            writer: Some(writer),
        }
    }

    #[test]
    fn a_writer_counts_from_its_claim_to_what_the_next_claimer_read() {
        let (a, b, c, d) = (Some(1), Some(2), Some(3), Some(4));
        let records = [
            put(0, None),
            put(1, None),
            claim(2, 1, 1), // a read offset 0 only: offset 1 is lost
            put(3, a),
            put(4, None), // a host from before writers, after a's claim
            put(5, a),
            claim(6, 2, 6), // b read everything
            put(7, a),      // a, stalled, after b's claim
            put(8, b),
            claim(9, 3, 9), // c and d claim at once, both having read to 9
            claim(10, 4, 9),
            put(11, c),
            put(12, d),
            put(13, Some(5)), // a writer that never claimed
        ];
        let expected = [
            true, false, false, true, false, true, false, false, true, false, false, false, true,
            false,
        ];
        assert_eq!(valid(P, &records), expected);
        let other = [claim(0, 1, 0), put(1, a)];
        assert!(!is_claim(P + 1, &other[0].key));
        assert_eq!(valid(P + 1, &other), [false, false]);
    }
}
