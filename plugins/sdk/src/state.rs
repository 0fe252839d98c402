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

use std::{cell::RefCell, rc::Rc};

use rustc_hash::{FxHashMap, FxHashSet};
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

fn mark(dirty: &mut FxHashSet<String>, key: &str) {
    if !dirty.contains(key) {
        dirty.insert(key.to_owned());
    }
}

struct MapInner<V> {
    name: String,
    /// `None` caches "absent in the host" so a miss is asked once.
    cache: FxHashMap<String, Option<V>>,
    dirty: FxHashSet<String>,
    /// Keys the host was asked for since the last checkpoint and did not
    /// have: deleting one of them again is no write at all (a session opened
    /// and closed between two checkpoints).
    fresh: FxHashSet<String>,
    /// Whether the cache holds every entry (after a full read from the host).
    complete: bool,
}

impl<V: DeserializeOwned> MapInner<V> {
    /// The host's value for `key`; remembers an absent one as fresh.
    fn fetch(&mut self, key: &str) -> Option<V> {
        match host::get(&prefixed(&self.name, key)) {
            Some(bytes) => decode(&bytes, key),
            None => {
                self.fresh.insert(key.to_owned());
                None
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
                    let value = decode(&entry.value, key);
                    self.cache.insert(key.to_owned(), value);
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
        let inner = Rc::new(RefCell::new(MapInner {
            name: name.to_owned(),
            cache: FxHashMap::default(),
            dirty: FxHashSet::default(),
            fresh: FxHashSet::default(),
            complete: false,
        }));
        register(inner.clone());
        Map { inner }
    }

    /// Runs `f` on the entry for `key` (`None` when absent); setting it to
    /// `None` deletes the entry. Changes are durable at the next checkpoint.
    pub fn with<R>(&self, key: &str, f: impl FnOnce(&mut Option<V>) -> R) -> R {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        if !inner.cache.contains_key(key) {
            let stored = inner.fetch(key);
            inner.cache.insert(key.to_owned(), stored);
        }
        mark(&mut inner.dirty, key);
        let slot = inner.cache.get_mut(key).expect("inserted above");
        f(slot)
    }

    /// A copy of the value for `key`.
    pub fn get(&self, key: &str) -> Option<V>
    where
        V: Clone,
    {
        let mut inner = self.inner.borrow_mut();
        if let Some(v) = inner.cache.get(key) {
            return v.clone();
        }
        let stored = inner.fetch(key);
        inner.cache.insert(key.to_owned(), stored.clone());
        stored
    }

    pub fn insert(&self, key: &str, value: V) {
        let mut inner = self.inner.borrow_mut();
        inner.cache.insert(key.to_owned(), Some(value));
        mark(&mut inner.dirty, key);
    }

    pub fn remove(&self, key: &str) {
        let mut inner = self.inner.borrow_mut();
        inner.cache.insert(key.to_owned(), None);
        mark(&mut inner.dirty, key);
    }

    /// Every entry, in key order (for queries). The first call reads every
    /// entry the host holds into guest memory.
    pub fn entries(&self) -> Vec<(String, V)>
    where
        V: Clone,
    {
        let mut inner = self.inner.borrow_mut();
        if !inner.complete {
            inner.load_all();
        }
        let mut all: Vec<(String, V)> = inner
            .cache
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Removes the entries for which `keep` is false (use it to close
    /// sessions or windows on a tick). The first call reads every entry the
    /// host holds into guest memory, so entries from before a restart are
    /// visited too.
    pub fn retain(&self, mut keep: impl FnMut(&str, &V) -> bool) {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        if !inner.complete {
            inner.load_all();
        }
        for (k, v) in inner.cache.iter_mut() {
            if v.as_ref().is_some_and(|v| !keep(k, v)) {
                *v = None;
                mark(&mut inner.dirty, k);
            }
        }
    }
}

impl<V: Serialize + DeserializeOwned + 'static> Flush for RefCell<MapInner<V>> {
    fn flush(&self) {
        let mut inner = self.borrow_mut();
        let inner = &mut *inner;
        let mut dirty: Vec<String> = std::mem::take(&mut inner.dirty).into_iter().collect();
        // Key order makes the host's writes deterministic.
        dirty.sort_unstable();
        for key in dirty {
            let full = prefixed(&inner.name, &key);
            match inner.cache.get(&key) {
                Some(Some(v)) => store(&full, v),
                Some(None) => {
                    if !inner.fresh.contains(&key) {
                        host::delete(&full);
                    }
                    // Absent entries need not stay cached once the host knows.
                    inner.cache.remove(&key);
                }
                None => {}
            }
        }
        // Written keys are in the host now; the others may stay unknown.
        inner.fresh.clear();
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
