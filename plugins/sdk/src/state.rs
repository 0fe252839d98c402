//! Durable keyed state, cached in the guest.
//!
//! [`Map`] and [`Cell`] keep typed values in guest memory and remember what
//! changed; at every checkpoint the host calls the plugin's `checkpoint`
//! export and the SDK writes the changed entries through the host's `state`
//! interface, where they become durable atomically with the source offsets.
//! A value missing from the cache is read from the host on first use, so a
//! restarted or reloaded plugin finds the state of the last checkpoint.
//!
//! Values are encoded with `postcard`; each container owns the key prefix
//! `name` + `\0`.

use std::{cell::RefCell, collections::BTreeMap, rc::Rc};

use rustc_hash::FxHashMap;
use serde::{Serialize, de::DeserializeOwned};

use crate::host;

/// Something holding dirty entries to hand to the host.
pub(crate) trait Flush {
    fn flush(&self);
}

/// The containers of a plugin instance.
pub(crate) type Containers = Vec<Rc<dyn Flush>>;

thread_local! {
    static CONTAINERS: RefCell<Containers> = const { RefCell::new(Vec::new()) };
}

/// Exchanges this thread's containers with `other` (a native instance's,
/// around each call: see [`crate::native`]).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn swap_containers(other: &mut Containers) {
    CONTAINERS.with(|c| std::mem::swap(&mut *c.borrow_mut(), other));
}

/// Writes every container's changes through the host's `state` interface.
pub(crate) fn flush_all() {
    let containers = CONTAINERS.with(|c| c.borrow().clone());
    for c in containers {
        c.flush();
    }
}

fn register(c: Rc<dyn Flush>) {
    CONTAINERS.with(|cs| cs.borrow_mut().push(c));
}

fn prefixed(name: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1 + key.len());
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn decode<V: DeserializeOwned>(bytes: &[u8], what: &str) -> Option<V> {
    match postcard::from_bytes(bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            crate::log::error(&format!(
                "state entry {what} does not decode ({e}); starting it afresh"
            ));
            None
        }
    }
}

fn store<V: Serialize>(key: &[u8], value: &V) {
    match postcard::to_allocvec(value) {
        Ok(bytes) => host::set(key, &bytes),
        Err(e) => crate::log::error(&format!("state entry does not encode: {e}")),
    }
}

/// One cached entry of a [`Map`].
struct Slot<V> {
    /// `None`: absent (in the host, or deleted since the last checkpoint).
    value: Option<V>,
    /// Changed since the last checkpoint.
    dirty: bool,
    /// Known absent in the host: deleting it is no write at all (a session
    /// opened and closed between two checkpoints).
    fresh: bool,
}

struct MapInner<V> {
    name: String,
    /// Absent entries are cached too, so a miss is asked of the host once.
    cache: FxHashMap<String, Slot<V>>,
    /// Whether the cache holds every entry (after a full read from the host).
    complete: bool,
}

impl<V: DeserializeOwned> MapInner<V> {
    /// The cached entry for `key`, read from the host on first use.
    fn slot(&mut self, key: &str) -> &mut Slot<V> {
        if !self.cache.contains_key(key) {
            // A complete cache knows every entry: a miss is an absent one.
            let stored = match self.complete {
                true => None,
                false => host::get(&prefixed(&self.name, key)),
            };
            let slot = Slot {
                fresh: stored.is_none(),
                value: stored.and_then(|b| decode(&b, key)),
                dirty: false,
            };
            self.cache.insert(key.to_owned(), slot);
        }
        self.cache.get_mut(key).expect("inserted above")
    }

    /// Sets the entry for `key` without asking the host what it held.
    fn put(&mut self, key: &str, value: Option<V>) {
        match self.cache.get_mut(key) {
            Some(slot) => {
                slot.value = value;
                slot.dirty = true;
            }
            None => {
                let slot = Slot {
                    value,
                    dirty: true,
                    fresh: false,
                };
                self.cache.insert(key.to_owned(), slot);
            }
        }
    }

    /// Reads every entry from the host into the cache, in pages; cached
    /// entries (possibly newer) are kept.
    fn load_all(&mut self) {
        const PAGE: u32 = 1024;
        let prefix = prefixed(&self.name, "");
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = host::scan(&prefix, after.as_deref(), PAGE);
            for entry in &page {
                let Ok(key) = std::str::from_utf8(&entry.key[prefix.len()..]) else {
                    continue;
                };
                if !self.cache.contains_key(key) {
                    let slot = Slot {
                        value: decode(&entry.value, key),
                        dirty: false,
                        fresh: false,
                    };
                    self.cache.insert(key.to_owned(), slot);
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE as usize => after = Some(last.key.clone()),
                _ => break,
            }
        }
        self.complete = true;
    }
}

/// A durable map from string keys to values of type `V`.
pub struct Map<V: Serialize + DeserializeOwned + 'static> {
    inner: Rc<RefCell<MapInner<V>>>,
}

impl<V: Serialize + DeserializeOwned + 'static> Map<V> {
    /// The map named `name`; two containers of one plugin need distinct names.
    pub fn new(name: &str) -> Self {
        // A map the host holds nothing of (a new instance) starts complete:
        // its misses never need asking.
        let empty = host::scan(&prefixed(name, ""), None, 1).is_empty();
        let inner = Rc::new(RefCell::new(MapInner {
            name: name.to_owned(),
            cache: FxHashMap::default(),
            complete: empty,
        }));
        register(inner.clone());
        Map { inner }
    }

    /// Runs `f` on the entry for `key` (`None` when absent); setting it to
    /// `None` deletes the entry. Changes are durable at the next checkpoint.
    pub fn with<R>(&self, key: &str, f: impl FnOnce(&mut Option<V>) -> R) -> R {
        let mut inner = self.inner.borrow_mut();
        let slot = inner.slot(key);
        slot.dirty = true;
        f(&mut slot.value)
    }

    /// Runs `f` on the value for `key`, which starts as `V::default()` when
    /// absent: `counts.update(name, |n| *n += 1)`. Changes are durable at the
    /// next checkpoint.
    pub fn update<R>(&self, key: &str, f: impl FnOnce(&mut V) -> R) -> R
    where
        V: Default,
    {
        self.with(key, |v| f(v.get_or_insert_with(V::default)))
    }

    /// A copy of the value for `key`.
    pub fn get(&self, key: &str) -> Option<V>
    where
        V: Clone,
    {
        self.inner.borrow_mut().slot(key).value.clone()
    }

    pub fn insert(&self, key: &str, value: V) {
        self.inner.borrow_mut().put(key, Some(value));
    }

    pub fn remove(&self, key: &str) {
        self.inner.borrow_mut().put(key, None);
    }

    /// Every entry, in key order (for queries; it serializes as a JSON
    /// object). The first call reads every entry the host holds into guest
    /// memory.
    pub fn entries(&self) -> BTreeMap<String, V>
    where
        V: Clone,
    {
        let mut inner = self.inner.borrow_mut();
        if !inner.complete {
            inner.load_all();
        }
        inner
            .cache
            .iter()
            .filter_map(|(k, s)| Some((k.clone(), s.value.clone()?)))
            .collect()
    }

    /// Removes the entries for which `keep` is false (use it to close
    /// sessions or windows on a tick). The first call reads every entry the
    /// host holds into guest memory, so entries from before a restart are
    /// visited too.
    pub fn retain(&self, mut keep: impl FnMut(&str, &V) -> bool) {
        let mut inner = self.inner.borrow_mut();
        if !inner.complete {
            inner.load_all();
        }
        for (k, slot) in inner.cache.iter_mut() {
            if slot.value.as_ref().is_some_and(|v| !keep(k, v)) {
                slot.value = None;
                slot.dirty = true;
            }
        }
    }
}

impl<V: Serialize + DeserializeOwned + 'static> Flush for RefCell<MapInner<V>> {
    fn flush(&self) {
        let mut inner = self.borrow_mut();
        let inner = &mut *inner;
        let mut dirty: Vec<(&String, &Slot<V>)> =
            inner.cache.iter().filter(|(_, s)| s.dirty).collect();
        // Key order makes the host's writes deterministic.
        dirty.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (key, slot) in dirty {
            let full = prefixed(&inner.name, key);
            match &slot.value {
                Some(v) => store(&full, v),
                None if slot.fresh => {}
                None => host::delete(&full),
            }
        }
        // Absent entries need not stay cached once the host knows.
        inner.cache.retain(|_, slot| {
            if !slot.dirty {
                return true;
            }
            slot.dirty = false;
            slot.fresh = false;
            slot.value.is_some()
        });
    }
}

struct CellInner<T> {
    name: String,
    value: Option<T>,
    dirty: bool,
}

/// One durable value of type `T` (starting as `T::default()`).
pub struct Cell<T: Serialize + DeserializeOwned + Default + 'static> {
    inner: Rc<RefCell<CellInner<T>>>,
}

impl<T: Serialize + DeserializeOwned + Default + 'static> Cell<T> {
    /// The cell named `name`; it must not clash with another container's name.
    pub fn new(name: &str) -> Self {
        let inner = Rc::new(RefCell::new(CellInner {
            name: name.to_owned(),
            value: None,
            dirty: false,
        }));
        register(inner.clone());
        Cell { inner }
    }

    fn load(inner: &mut CellInner<T>) -> &mut T {
        inner.value.get_or_insert_with(|| {
            host::get(&prefixed(&inner.name, ""))
                .and_then(|b| decode(&b, &inner.name))
                .unwrap_or_default()
        })
    }

    /// Runs `f` on the value; the change is durable at the next checkpoint.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut inner = self.inner.borrow_mut();
        inner.dirty = true;
        f(Self::load(&mut inner))
    }

    /// Runs `f` on the value without changing it.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        let mut inner = self.inner.borrow_mut();
        f(Self::load(&mut inner))
    }

    /// A copy of the value.
    pub fn get(&self) -> T
    where
        T: Clone,
    {
        self.read(T::clone)
    }
}

impl<T: Serialize + DeserializeOwned + Default + 'static> Flush for RefCell<CellInner<T>> {
    fn flush(&self) {
        let mut inner = self.borrow_mut();
        if std::mem::take(&mut inner.dirty)
            && let Some(v) = &inner.value
        {
            store(&prefixed(&inner.name, ""), v);
        }
    }
}
