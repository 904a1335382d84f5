//! The tables a run of requests is decoded with: series keys by a hash of their parts, keys
//! of spans by (remembered resource, operation), operation names by their bytes, and
//! resources by their bytes. Each answers exactly as reading afresh would
//! (`decode::tests` holds them to it).

use super::attrs::{AttrValue, RawValue};
use super::traces::MAX_DIMS;
use super::wire::utf8;
use super::{DecodeConfig, DecodeError, Decoded, clip};
use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;
use trike_engine::SeriesKey;

/// Series keys of a batch (`Decoded::batch.keys`), found by a hash of their parts: a key seen
/// before costs a lookup, not an allocation. Kept across requests decoded into one batch.
#[derive(Default)]
pub struct Keys {
    pub(super) index: KeyIndex,
    /// Operation names scrubbed before.
    pub(crate) names: Names,
    /// Resources read before.
    pub(super) resources: Resources,
    /// Keys of spans that take everything but their operation from a remembered resource.
    pub(super) spans: SpanKeys,
}

/// The key of a span whose version and dimensions are its resource's, by (remembered
/// resource, operation): a record of a resource and operation seen before in the batch costs
/// one lookup, instead of checking its version and hashing and comparing every part of its key.
#[derive(Default)]
pub(super) struct SpanKeys {
    /// (resource id, the operation's address) → the operation (held, so that its address is
    /// not reused while it keys this map) and the key's index in the batch.
    by: HashMap<(u32, usize), (Arc<str>, u32), foldhash::fast::RandomState>,
}

/// Most span keys remembered (then forgotten all at once).
const SPAN_KEYS_CACHED: usize = 65_536;

impl SpanKeys {
    pub(super) fn get(&self, resource: u32, op: &Arc<str>, out: &Decoded) -> Option<u32> {
        let (held, i) = self.by.get(&(resource, address(op)))?;
        // (A key index always names a key of this batch: the map is cleared when a request
        // that failed takes its keys back.)
        (Arc::ptr_eq(held, op) && (*i as usize) < out.batch.keys.len()).then_some(*i)
    }

    /// Forgets every span key (a failed request took its keys back: an index may name
    /// another key next).
    pub(super) fn clear(&mut self) {
        self.by.clear();
    }

    pub(super) fn insert(&mut self, resource: u32, op: &Arc<str>, key: u32) {
        if self.by.len() >= SPAN_KEYS_CACHED {
            self.by.clear();
        }
        self.by.insert((resource, address(op)), (op.clone(), key));
    }
}

/// Where an operation's text is (an `Arc` held by [`SpanKeys`] keeps it there).
fn address(op: &Arc<str>) -> usize {
    Arc::as_ptr(op).cast::<u8>() as usize
}

/// What was found in resources read before, by their bytes: the Kafka source's records each
/// carry their resource whole, and a run of them repeats a few resources over and over. A
/// resource seen before costs a hash and a comparison, and reading the few attributes that
/// matter, instead of reading every attribute.
#[derive(Default)]
pub(super) struct Resources {
    by_hash: ByHash<Memo>,
    hasher: foldhash::fast::RandomState,
    /// The id the next remembered resource gets (ids are never reused).
    next_id: u32,
}

impl Resources {
    /// What `resource` was found to hold when the same bytes were read before (`hash` is
    /// [`Resources::hash`] of it).
    pub(super) fn get(&self, hash: u64, resource: &[u8]) -> Option<&Memo> {
        self.by_hash.get(&hash).filter(|m| *m.bytes == *resource)
    }

    /// The resource [`Resources::get`] just found by `hash`.
    pub(super) fn known(&self, hash: u64) -> &Memo {
        &self.by_hash[&hash]
    }

    pub(super) fn hash(&self, resource: &[u8]) -> u64 {
        self.hasher.hash_one(resource)
    }

    /// Remembers what `resource` holds (`found`, whose bytes and id are set here) when it is
    /// small enough; its id then.
    pub(super) fn remember(&mut self, hash: u64, resource: &[u8], mut found: Memo) -> Option<u32> {
        if resource.len() > RESOURCE_CACHED_BYTES {
            return None;
        }
        if self.by_hash.len() >= RESOURCES_CACHED {
            self.by_hash.clear();
        }
        found.bytes = resource.into();
        found.id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let id = found.id;
        self.by_hash.insert(hash, found);
        Some(id)
    }
}

/// A resource's facts: its service name, and where its version and dimensions are.
#[derive(Default)]
pub(super) struct Memo {
    pub(super) id: u32,
    bytes: Box<[u8]>,
    pub(super) service: Option<Arc<str>>,
    pub(super) version: Option<Place>,
    pub(super) dims: [Option<Place>; MAX_DIMS],
    /// Attributes over the limits, dropped.
    pub(super) dropped: u64,
}

/// Where an attribute's value is: a string's bytes in the resource (checked as UTF-8 where it
/// is used, as when read afresh), or a value that is not a string.
#[derive(Clone, Copy)]
pub(super) enum Place {
    Str(u32, u32),
    Val(AttrValue<'static>),
}

impl Place {
    /// `v`'s place in `resource`, which holds it.
    pub(super) fn of(resource: &[u8], v: RawValue<'_>) -> Self {
        match v {
            RawValue::Str(b) => {
                let start = b.as_ptr() as usize - resource.as_ptr() as usize;
                Place::Str(start as u32, (start + b.len()) as u32)
            }
            RawValue::Val(v) => Place::Val(match v {
                AttrValue::Int(i) => AttrValue::Int(i),
                AttrValue::Bool(b) => AttrValue::Bool(b),
                AttrValue::Double(d) => AttrValue::Double(d),
                // (A string is never a `Val`.)
                AttrValue::Str(_) | AttrValue::Other => AttrValue::Other,
            }),
        }
    }

    pub(super) fn read(self, resource: &[u8]) -> RawValue<'_> {
        match self {
            Place::Str(s, e) => RawValue::Str(&resource[s as usize..e as usize]),
            Place::Val(v) => RawValue::Val(v),
        }
    }
}

/// Most resources remembered (then forgotten all at once), and the largest remembered.
const RESOURCES_CACHED: usize = 256;
const RESOURCE_CACHED_BYTES: usize = 4096;

impl Keys {
    /// The tables for the next batch: those bound to this batch's keys start empty, the
    /// operation names scrubbed so far are carried over. (The Kafka source does the same by
    /// handing `names` from run to run; benchmarks decode runs of records this way.)
    pub fn for_next_batch(&mut self) -> Keys {
        Keys {
            names: std::mem::take(&mut self.names),
            ..Keys::default()
        }
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

/// Operation names read before, by a hash of their bytes as read: the bytes, and the
/// operation they became (UTF-8 checked, clipped, scrubbed). A name seen before is neither
/// checked nor scanned again, and its series keys share one allocation. May outlive one
/// batch (the Kafka source keeps it from run to run).
#[derive(Default)]
pub(crate) struct Names {
    scrubbed: ByHash<(Box<[u8]>, Arc<str>)>,
    hasher: foldhash::fast::RandomState,
    /// The scrubbing they went through.
    scrub: Option<super::scrub::Scrub>,
    /// The operation of the last name too long to remember.
    spare: Arc<str>,
}

/// Most operation names [`Keys`] remembers scrubbed, and the longest (a span's name is
/// bounded only by the request: longer names are checked and scrubbed each time, so the
/// cache, which lives from batch to batch, holds at most 4 MiB of names).
const SCRUBBED_CACHE: usize = 4096;
const NAME_CACHED_BYTES: usize = 1024;

/// A map whose keys are hashes already.
type ByHash<V> = HashMap<u64, V, BuildHasherDefault<Prehashed>>;

/// The map's keys are hashes already.
#[derive(Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// A value as the text of a key part (clipped).
pub(super) fn text(v: Option<AttrValue<'_>>) -> Cow<'_, str> {
    match v.map(AttrValue::into_text).unwrap_or_default() {
        Cow::Borrowed(b) => Cow::Borrowed(clip(b)),
        Cow::Owned(o) => Cow::Owned(clip(&o).to_string()),
    }
}

/// Hashes a part of a key (with a separator, so ("ab","c") and ("a","bc") differ).
fn hash_part(h: &mut impl Hasher, bytes: &[u8]) {
    h.write(bytes);
    h.write_u8(0xff);
}

fn hash_value(h: &mut impl Hasher, v: Option<AttrValue<'_>>) {
    match v {
        None => h.write_u8(0),
        Some(AttrValue::Str(s)) => hash_part(h, s.as_bytes()),
        Some(other) => hash_part(h, other.into_text().as_bytes()),
    }
}

impl Names {
    /// Names are scrubbed by `scrub` from now on: those remembered from another scrubbing
    /// are forgotten. (Called once per request, before [`Names::operation`].)
    pub(super) fn follow(&mut self, scrub: &super::scrub::Scrub) {
        if self.scrub.as_ref() != Some(scrub) {
            self.scrubbed.clear();
            self.scrub = Some(scrub.clone());
        }
    }

    /// The operation that a name's bytes `raw` become: UTF-8 checked (an error names it as
    /// `what`), clipped and scrubbed, or remembered from the same bytes read before; and
    /// whether it is remembered (then the same bytes give the same `Arc` until the cache is
    /// cleared).
    pub(super) fn operation(
        &mut self,
        raw: &[u8],
        what: &str,
        cfg: &DecodeConfig,
    ) -> Result<(&Arc<str>, bool), DecodeError> {
        use std::collections::hash_map::Entry;
        debug_assert!(self.scrub.as_ref() == Some(&cfg.scrub), "`follow` first");
        let scrubbed = |raw| -> Result<Arc<str>, DecodeError> {
            Ok(match cfg.scrub.operation(clip(utf8(raw, what)?)) {
                Cow::Borrowed(same) => same.into(),
                Cow::Owned(changed) => changed.into(),
            })
        };
        if raw.len() > NAME_CACHED_BYTES {
            self.spare = scrubbed(raw)?;
            return Ok((&self.spare, false));
        }
        let hash = self.hasher.hash_one(raw);
        if self.scrubbed.len() >= SCRUBBED_CACHE && !self.scrubbed.contains_key(&hash) {
            self.scrubbed.clear();
        }
        let slot = match self.scrubbed.entry(hash) {
            Entry::Occupied(e) if *e.get().0 == *raw => e.into_mut(),
            entry => {
                let op = scrubbed(raw)?;
                // (On a collision the newer name takes the slot.)
                match entry {
                    Entry::Occupied(mut e) => {
                        e.insert((raw.into(), op));
                        e.into_mut()
                    }
                    Entry::Vacant(e) => e.insert((raw.into(), op)),
                }
            }
        };
        Ok((&slot.1, true))
    }
}

/// Series keys of a batch by a hash of their parts.
#[derive(Default)]
pub(super) struct KeyIndex {
    by_hash: ByHash<u32>,
    /// Seeded per table (a hash that must not be stable: a crafted collision costs a lookup).
    hasher: foldhash::fast::RandomState,
}

impl KeyIndex {
    pub(super) fn index_of(
        &mut self,
        service: &str,
        operation: &Arc<str>,
        version: Option<AttrValue<'_>>,
        dims: &[Option<AttrValue<'_>>],
        cfg: &DecodeConfig,
        out: &mut Decoded,
    ) -> u32 {
        let mut h = self.hasher.build_hasher();
        hash_part(&mut h, service.as_bytes());
        hash_part(&mut h, operation.as_bytes());
        hash_value(&mut h, version);
        for d in dims {
            hash_value(&mut h, *d);
        }
        let hash = h.finish();
        if let Some(&i) = self.by_hash.get(&hash)
            && let Some(k) = out.batch.keys.get(i as usize)
        {
            // Verify: FNV is not collision-proof against crafted input.
            let same = &*k.service == service
                && k.operation == *operation
                && *k.version == *text(version)
                && k.dims.iter().zip(dims).all(|((_, v), d)| **v == *text(*d));
            if same {
                return i;
            }
        }
        let key = SeriesKey {
            service: service.into(),
            operation: operation.clone(),
            version: Arc::from(&*text(version)),
            dims: cfg
                .dimensions
                .iter()
                .zip(dims)
                .map(|(k, v)| (Arc::from(k.as_str()), Arc::from(&*text(*v))))
                .collect(),
        };
        out.batch.keys.push(key);
        let i = (out.batch.keys.len() - 1) as u32;
        // On a (crafted) collision the newer key wins the slot; both stay correct.
        self.by_hash.insert(hash, i);
        i
    }
}
