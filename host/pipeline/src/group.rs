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
use weft_source::{Group, Identity, Offsets, Rebalance, Record};
use weft_state::{Part, meta_key};

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

/// Makes partition `part`'s local state current with the changelog; true
/// if it was restored from it.
fn restore(shared: &Shared, m: &Membership, part: Part) -> Result<bool, PipelineError> {
    let started = Instant::now();
    let store = &shared.store;
    // Nothing was appended since this store's last checkpoint: current,
    // without reading the changelog.
    let end = m.group.end(part as i32)?;
    if end > 0 && store.changelog_end(part)? == Some(end) && store.meta(part)?.is_some() {
        tracing::info!(
            partition = part,
            "Partition state here is the changelog's last."
        );
        return Ok(false);
    }
    lock(&m.restoring).insert(part, (0, 0));
    let read = m.group.read(part as i32, &mut |read, total| {
        lock(&m.restoring).insert(part, (read, total));
    });
    lock(&m.restoring).remove(&part);
    let (records, mut end) = read?;
    let meta = meta_key(part);
    let last_meta = records.iter().rposition(|(k, v)| *k == meta && v.is_some());
    let whole = last_meta.map_or(0, |i| i + 1);
    let mut state: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (k, v) in &records[..whole] {
        match v {
            Some(v) => state.insert(k.clone(), v.clone()),
            None => state.remove(k),
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
    let cut = &records[whole..];
    if !cut.is_empty() {
        let mut keys: BTreeSet<&Vec<u8>> = cut.iter().map(|(k, _)| k).collect();
        keys.remove(&meta);
        let mut repair: Vec<Record> = keys
            .into_iter()
            .map(|k| (k.clone(), state.get(k).cloned()))
            .collect();
        if let Some(last) = last.clone() {
            repair.push((meta, Some(last)));
        }
        tracing::warn!(
            partition = part,
            records = cut.len(),
            "The changelog ends in a checkpoint cut short; its records are not applied and are overwritten."
        );
        end = m.group.write(part as i32, &repair)?;
    }
    store.set_changelog_end(part, end)?;
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
            .map(|(k, v)| (k.len() + v.as_ref().map_or(0, Vec::len)) as u64)
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
            restore(&self.shared, m, part)?;
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
            tracing::info!(partition = p, "Partition handed over.");
        }
        if let Some(m) = self.shared.group.get() {
            m.changed.store(true, Ordering::Release);
        }
        Ok(())
    }
}
