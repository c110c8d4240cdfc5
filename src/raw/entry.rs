//! Entries and their value cells.
//!
//! An [`Entry`] holds one key and an atomic *value word*: a pointer to its current value, which
//! encodes the entry's state, and (on 64-bit targets) in the word's top 16 bits, bits 48..64 of
//! the key's mixed hash (see "The hash bits" below). The pointer:
//!
//! | pointer            | state     | meaning                                                    |
//! |--------------------|-----------|------------------------------------------------------------|
//! | a value allocation | live      | the key is present with this value                         |
//! | null               | deleted   | the key is absent; the entry may be revived in place       |
//! | [`expunged()`]     | expunged  | absent, and the entry is in no dirty table; terminal       |
//!
//! Transitions: live -> live (store, CAS), live -> deleted (remove), deleted -> live (store,
//! revive), deleted -> expunged (migration, under the dirty lock). Nothing leaves `expunged`: a
//! key whose read-tier entry is expunged is re-inserted as a new entry in the dirty tier.
//!
//! **The hash bits.** A migration places an entry in another table by the top 32 bits of its
//! key's mixed hash (`raw::hashbits`), without hashing the key again. Bits 32..48 are the slot
//! tag, which every slot holding the entry carries; bits 48..64 ride in the value word's top 16
//! bits, which user-space pointers on x86-64 and AArch64 leave zero (as the slot tag does:
//! every pointer the word takes is checked). They are set when the entry is created and every
//! store and compare-and-swap keeps them ([`Entry::load`] and the other accessors hand out the
//! pointer without them), so an entry costs no hash field: 24 bytes for `u64 -> u64` instead
//! of 32. Targets with narrower pointers keep the top 32 bits in a field.
//!
//! A value lives in its own allocation (at least one byte, so that two values never share an
//! address and a compare-and-swap on the pointer cannot confuse them) and is retired through
//! the epoch when replaced or removed. The exception is the first value of an entry whose type
//! has no drop glue (`u64`, `&'static str`, plain structs...): it is stored *inline*, in the
//! entry's own allocation, which saves an allocation per insert and a cache miss per read. An
//! inline value that is replaced or removed needs no retirement: it has nothing to drop, and
//! its bytes stay valid (never written again) for as long as the entry, which readers already
//! rely on.

use std::alloc::{self, Layout};
use std::ptr;

use super::arena::{Arena, SlotCache};
use crate::facade::AtomicPtr;

use super::witness::Witness;
use std::sync::atomic::Ordering::{AcqRel, Acquire};

/// The value word's bits that hold bits 48..64 of the key's mixed hash (none on targets with
/// narrower pointers, which keep the hash in a field).
#[cfg(target_pointer_width = "64")]
const HASH_IN_WORD: usize = 0xFFFF << 48;
#[cfg(not(target_pointer_width = "64"))]
const HASH_IN_WORD: usize = 0;

/// Whether `addr` leaves the word's hash bits free (checked for every pointer the word takes).
#[inline]
fn fits_word(addr: usize) -> bool {
    addr & HASH_IN_WORD == 0
}

/// The pointer of a value word (hash bits cleared, provenance kept).
#[inline]
fn strip<V>(w: *mut V) -> *mut V {
    w.map_addr(|a| a & !HASH_IN_WORD)
}

/// The value word of pointer `p` (a value, null or [`expunged()`]) with hash bits `bits`.
#[inline]
fn word<V>(p: *mut V, bits: usize) -> *mut V {
    p.map_addr(|a| a | bits)
}

/// The address of the `expunged` marker: in the first page, which no allocation ever takes
/// (it stays unmapped so that null dereferences fault), so it cannot collide with a value. It
/// is never dereferenced. A constant, so that [`Entry::load`] compares with an immediate
/// operand (the address of a static, as until 2026-12, took one more instruction to form).
const EXPUNGED_ADDR: usize = 8;

/// The `expunged` marker as a value pointer.
#[inline]
pub(crate) fn expunged<V>() -> *mut V {
    ptr::without_provenance_mut(EXPUNGED_ADDR)
}

/// The state read from an entry.
pub(crate) enum State<V> {
    Live(*mut V),
    Deleted,
    Expunged,
}

/// One key and its value cell. Shared by the read and the dirty table while both hold it.
///
/// Allocated by [`Entry::create`] in a slot of the map's [`Arena`] (of [`entry_layout`]: the
/// entry, then the inline value slot when `V` has no drop glue) and freed by
/// [`Entry::destroy`] or [`Entry::into_parts`].
pub(crate) struct Entry<K, V> {
    pub(crate) key: K,
    /// Targets without room in the value word: the bits of the key's mixed hash that the
    /// tables use (`hashbits::KEPT`, the rest zero).
    #[cfg(not(target_pointer_width = "64"))]
    hash: u64,
    // Invariant: the value word. Its pointer is null, `expunged()`, this entry's inline slot,
    // or a pointer from `alloc_value` that no other entry holds; its `HASH_IN_WORD` bits are
    // bits 48..64 of the key's mixed hash from creation on (every store keeps them).
    value: AtomicPtr<V>,
    /// Loom builds: lets the models see a read of the key or of the inline value through a
    /// slot published without release (see `raw::witness::Witness`).
    witness: Witness,
}

/// Bytes an entry of `K, V` takes, with its inline value slot, plus its value cell when it
/// holds a live value that is not inline (statistics).
pub(crate) fn entry_bytes<K, V>(live: bool) -> usize {
    let cell = if live && !inline::<V>() {
        value_size::<V>()
    } else {
        0
    };
    entry_layout::<K, V>().0.size() + cell
}

/// Whether values of type `V` are stored inline in their entry (see the module docs).
#[inline]
pub(crate) const fn inline<V>() -> bool {
    !std::mem::needs_drop::<V>()
}

/// Whether freeing an entry of `K, V` can do anything but give its slot back: `false` when
/// neither the key nor the value has drop glue (the value is then inline). Such an entry still
/// owns a value outside its slot after a replacement (the slot held the first value): the
/// shard records whether that ever happened (`Shard::cells`), and while it has not, a dropped
/// map gives its arena's blocks back whole ([`Arena::release_all`]) without visiting its
/// entries.
#[inline]
pub(crate) const fn entries_need_drop<K, V>() -> bool {
    std::mem::needs_drop::<K>() || !inline::<V>()
}

/// The layout of an entry allocation and the offset of its inline value slot (0 if none).
///
/// A zero-sized inline value takes no room: its slot is the entry's own address (offset 0,
/// the layout aligned for `V` too). That address is unique to the entry, as an inline slot's
/// must be (no value cell, a separate allocation of at least a byte, can have it; a slot at the
/// entry's end could be the next block's first byte), so `u64` keys with `()` values take 16
/// bytes, not 24.
#[inline]
fn entry_layout<K, V>() -> (Layout, usize) {
    let base = Layout::new::<Entry<K, V>>();
    if inline::<V>() && std::mem::size_of::<V>() == 0 {
        let layout = base
            .align_to(std::mem::align_of::<V>())
            .expect("entry layout");
        (layout.pad_to_align(), 0)
    } else if inline::<V>() {
        let (layout, offset) = base.extend(value_layout::<V>()).expect("entry layout");
        (layout.pad_to_align(), offset)
    } else {
        (base, 0)
    }
}

impl<K, V> Entry<K, V> {
    /// The arena for a map's entries.
    pub(crate) fn arena() -> Arena {
        Arena::for_entries(entry_layout::<K, V>().0)
    }

    /// Allocates an entry holding `key` (whose mixed hash is `hash`) and `value` in a slot of
    /// `arena` (made by [`Entry::arena`]), taken from the shard's reserved slots `cache`.
    ///
    /// # Panics
    /// If the allocator returns an address that does not leave the table's tag bits free (see
    /// `table`): never seen on the targets Rust supports, whose allocators hand out user-space
    /// addresses below 2^48; checked so that it can never mistag a slot.
    pub(crate) fn create(
        hash: u64,
        key: K,
        value: V,
        arena: &Arena,
        cache: &mut SlotCache,
    ) -> *mut Entry<K, V> {
        let (_, offset) = entry_layout::<K, V>();
        let e = arena.alloc_cached(cache).cast::<Entry<K, V>>();
        if !super::table::fits_tag(e.addr()) {
            // SAFETY: just allocated from `arena`, holds nothing yet.
            unsafe { arena.free(e.cast()) };
            panic!("tiermap: the allocator returned an address above 2^48; slots cannot be tagged");
        }
        let v = if inline::<V>() {
            // SAFETY: `offset` is inside the slot (of `entry_layout`) and aligned for `V`
            // (Layout::extend; for a zero-sized `V`, offset 0 of a slot aligned for it).
            let v = unsafe { e.cast::<u8>().add(offset) }.cast::<V>();
            // SAFETY: as above; the slot is fresh.
            unsafe { v.write(value) };
            v
        } else {
            alloc_value(value)
        };
        // SAFETY: `e` is a fresh slot with the layout of `Entry` at offset 0.
        unsafe {
            e.write(Entry {
                key,
                #[cfg(not(target_pointer_width = "64"))]
                hash: hash & super::hashbits::KEPT,
                value: AtomicPtr::new(word(v, hash as usize & HASH_IN_WORD)),
                witness: Witness::new(),
            })
        };
        e
    }

    /// Drops an entry (its key, and its value if live) and frees its slot through `batch`
    /// (after the entry's contents are dropped, also when that panics).
    ///
    /// # Safety
    /// `e` came from [`Entry::create`] with `batch`'s arena, is freed once, and no reader can
    /// reach it any more.
    pub(crate) unsafe fn destroy(e: *mut Entry<K, V>, batch: &mut FreeBatch<'_>) {
        /// Hands the slot to the batch once the entry's drop glue has run (or unwound).
        struct Keep<'b, 'a>(*mut u8, &'b mut FreeBatch<'a>);
        impl Drop for Keep<'_, '_> {
            fn drop(&mut self) {
                // SAFETY: the entry in the slot is dropped (or its drop unwound); the slot is
                // freed once, by the batch.
                unsafe { self.1.push(self.0) };
            }
        }
        let _keep = Keep(e.cast(), batch);
        // SAFETY: per the caller; `_keep` gives the slot back afterwards, also on unwinding.
        unsafe { ptr::drop_in_place(e) };
    }

    /// Moves the key and the live value (if any) out of an entry and frees its slot.
    ///
    /// # Safety
    /// As for [`Entry::destroy`], with `arena` for the batch's.
    pub(crate) unsafe fn into_parts(e: *mut Entry<K, V>, arena: &Arena) -> (K, Option<V>) {
        // SAFETY: per the caller, `e` is live and exclusively ours; its fields are moved out
        // or dropped once, then the slot is freed once.
        unsafe {
            let value = (*e).take_exclusive().map(|p| (*e).take_value(p));
            let key = ptr::read(&(*e).key);
            ptr::drop_in_place(ptr::addr_of_mut!((*e).value));
            ptr::drop_in_place(ptr::addr_of_mut!((*e).witness));
            arena.free(e.cast());
            (key, value)
        }
    }

    /// Loom builds: checks that this entry's creation (its key, its inline value) happens-before
    /// the caller's access; a no-op otherwise. Called by every lock-free path that reaches an
    /// entry through a table slot, before it reads the key.
    #[inline(always)]
    pub(crate) fn witness(&self) -> &Self {
        self.witness.check();
        self
    }

    /// Whether `p` is this entry's inline value slot. Compares addresses only.
    #[inline]
    fn is_inline(&self, p: *mut V) -> bool {
        inline::<V>() && p.addr() == (self as *const Self).addr() + entry_layout::<K, V>().1
    }

    /// Whether a value the caller unlinked from this entry must be retired (freed after the
    /// grace period): every value but the inline one, which has no drop glue and lives as long
    /// as the entry.
    #[inline]
    pub(crate) fn owns_cell(&self, p: *mut V) -> bool {
        !self.is_inline(p)
    }

    /// Moves a value taken from this entry out of its storage.
    ///
    /// # Safety
    /// `p` was taken from this entry with exclusive access and is not used afterwards.
    unsafe fn take_value(&self, p: *mut V) -> V {
        if self.is_inline(p) {
            // SAFETY: the inline slot holds an initialized `V`; it is not dropped by the entry.
            unsafe { ptr::read(p) }
        } else {
            // SAFETY: per the caller.
            unsafe { take_value(p) }
        }
    }

    /// The bits of the key's mixed hash that the tables use (`hashbits::KEPT`; the rest zero),
    /// given `tag16`, the tag of a slot that holds this entry (bits 32..48; ignored where the
    /// entry keeps them itself).
    ///
    /// Relaxed: the hash bits of the word never change after the entry's creation, which
    /// happens-before any access through a table (the slot's release store).
    #[inline]
    pub(crate) fn kept_hash(&self, tag16: u16) -> u64 {
        #[cfg(target_pointer_width = "64")]
        {
            let hash = (self.hash_bits() as u64) | (u64::from(tag16) << 32);
            debug_assert_eq!(hash & !super::hashbits::KEPT, 0);
            hash
        }
        #[cfg(not(target_pointer_width = "64"))]
        {
            let _ = tag16;
            self.hash
        }
    }

    /// The value word's hash bits (see [`Entry::kept_hash`] for the ordering).
    #[inline]
    fn hash_bits(&self) -> usize {
        if HASH_IN_WORD == 0 {
            0
        } else {
            self.value.load(std::sync::atomic::Ordering::Relaxed).addr() & HASH_IN_WORD
        }
    }

    /// The state a value word encodes.
    #[inline]
    fn decode(w: *mut V) -> State<V> {
        let p = strip(w);
        if p.is_null() {
            State::Deleted
        } else if p.addr() == EXPUNGED_ADDR {
            State::Expunged
        } else {
            State::Live(p)
        }
    }

    /// Reads the entry's state.
    ///
    /// `Acquire` pairs with the `Release` half of the CAS that stored the pointer, so the value's
    /// contents written before it was stored are visible to whoever dereferences it.
    #[inline]
    pub(crate) fn load(&self) -> State<V> {
        #[cfg(tiermap_mutation = "relaxed_value_load")]
        let p = self.value.load(std::sync::atomic::Ordering::Relaxed);
        #[cfg(not(tiermap_mutation = "relaxed_value_load"))]
        let p = self.value.load(Acquire);
        Self::decode(p)
    }

    /// Whether the entry is expunged. Stable under the dirty lock (only migration expunges, and
    /// nothing leaves the state).
    #[inline]
    pub(crate) fn is_expunged(&self) -> bool {
        matches!(self.load(), State::Expunged)
    }

    /// Replaces the value unless the entry is expunged. Returns `Err(())` if expunged, else the
    /// previous state (`Some(old)` if it was live, `None` if it was deleted and is now revived).
    ///
    /// `AcqRel`: release publishes `new`'s contents; acquire makes `old`'s contents visible to
    /// the caller, which may hand out a reference to it.
    #[inline]
    pub(crate) fn try_store(&self, new: *mut V) -> Result<Option<*mut V>, ()> {
        debug_assert!(fits_word(new.addr()));
        let mut cur = self.value.load(Acquire);
        loop {
            if strip(cur) == expunged() {
                return Err(());
            }
            #[cfg(not(tiermap_mutation = "relaxed_value_store"))]
            let success = AcqRel;
            // Deliberately too weak for the loom models (`new` unpublished); never built
            // otherwise.
            #[cfg(tiermap_mutation = "relaxed_value_store")]
            let success = Acquire;
            let bits = cur.addr() & HASH_IN_WORD;
            // Deliberately wrong (the stored word loses the hash bits, so a later migration
            // misplaces the entry); never built otherwise.
            #[cfg(tiermap_mutation = "word_drops_hash_bits")]
            let bits = {
                let _ = bits;
                0
            };
            match self
                .value
                .compare_exchange_weak(cur, word(new, bits), success, Acquire)
            {
                Ok(old) => {
                    let old = strip(old);
                    return Ok(if old.is_null() { None } else { Some(old) });
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Stores `new` if the entry is deleted. Returns `Ok(())` if stored, `Err(state)` with the
    /// live value or the expunged state otherwise.
    #[inline]
    pub(crate) fn try_revive(&self, new: *mut V) -> Result<(), State<V>> {
        #[cfg(not(tiermap_mutation = "relaxed_revive"))]
        let success = AcqRel;
        // Deliberately too weak for the loom models; never built otherwise.
        #[cfg(tiermap_mutation = "relaxed_revive")]
        let success = Acquire;
        debug_assert!(fits_word(new.addr()));
        let bits = self.hash_bits();
        match self.value.compare_exchange(
            word(ptr::null_mut(), bits),
            word(new, bits),
            success,
            Acquire,
        ) {
            Ok(_) => Ok(()),
            Err(actual) => Err(Self::decode(actual)),
        }
    }

    /// Replaces `current` (a live pointer read from this entry) by `new` (a value pointer or
    /// null). Fails if the entry no longer holds `current`. (The hash bits are read first: a
    /// word holding `current` holds them too.)
    ///
    /// Orderings as in [`Entry::try_store`].
    #[inline]
    pub(crate) fn replace_exact(&self, current: *mut V, new: *mut V) -> Result<(), State<V>> {
        #[cfg(not(tiermap_mutation = "relaxed_cas_publish"))]
        let success = AcqRel;
        // Deliberately too weak for the loom models; never built otherwise.
        #[cfg(tiermap_mutation = "relaxed_cas_publish")]
        let success = Acquire;
        debug_assert!(fits_word(new.addr()));
        let bits = self.hash_bits();
        match self
            .value
            .compare_exchange(word(current, bits), word(new, bits), success, Acquire)
        {
            Ok(_) => Ok(()),
            Err(actual) => Err(Self::decode(actual)),
        }
    }

    /// Deletes the value if live, returning it.
    #[inline]
    pub(crate) fn try_delete(&self) -> Option<*mut V> {
        let mut cur = self.value.load(Acquire);
        loop {
            let p = strip(cur);
            if p.is_null() || p == expunged() {
                return None;
            }
            let deleted = word(ptr::null_mut(), cur.addr() & HASH_IN_WORD);
            match self
                .value
                .compare_exchange_weak(cur, deleted, AcqRel, Acquire)
            {
                Ok(_) => return Some(p),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Migration step: turns a deleted entry into an expunged one. Returns `true` if the entry is
    /// now expunged, `false` if it is live (and must be copied to the dirty table).
    ///
    /// Called only under the dirty lock. `AcqRel` on success orders the marker after every
    /// earlier store to the cell; the failure load needs no ordering because the caller only
    /// learns that the entry is live and copies the entry pointer, not the value.
    pub(crate) fn expunge_if_deleted(&self) -> bool {
        // Most entries a migration meets are live: a plain load tells, without the locked
        // read-modify-write of a failing compare-and-swap. Relaxed, as the CAS's failure load
        // below: the caller learns only that the entry was live and copies the entry pointer
        // (if it is deleted meanwhile, it is copied as a deleted entry, as when the CAS fails
        // just before the removal).
        let w = self.value.load(std::sync::atomic::Ordering::Relaxed);
        let p = strip(w);
        if !p.is_null() && p != expunged() {
            return false;
        }
        let bits = w.addr() & HASH_IN_WORD;
        loop {
            match self.value.compare_exchange(
                word(ptr::null_mut(), bits),
                word(expunged(), bits),
                AcqRel,
                std::sync::atomic::Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(w) if strip(w) == expunged() => return true,
                Err(w) if !strip(w).is_null() => return false,
                Err(_) => continue,
            }
        }
    }

    /// Takes the value out of an entry the caller owns exclusively.
    pub(crate) fn take_exclusive(&mut self) -> Option<*mut V> {
        let bits = self.hash_bits();
        let p = strip(self.value.swap(word(ptr::null_mut(), bits), AcqRel));
        if p.is_null() || p == expunged() {
            None
        } else {
            Some(p)
        }
    }
}

impl<K, V> Drop for Entry<K, V> {
    fn drop(&mut self) {
        if let Some(p) = self.take_exclusive() {
            if !self.is_inline(p) {
                // SAFETY: the entry is being dropped, so it is its value's only owner (entry
                // invariant: no other entry holds the pointer), and whoever drops an entry has
                // established that no reader can still reach it. (An inline value has no drop
                // glue; its bytes are freed with the entry.)
                unsafe { free_value(p) };
            }
        }
    }
}

#[inline]
fn value_layout<V>() -> Layout {
    let layout = Layout::new::<V>();
    // At least one byte, so that distinct values have distinct addresses even for zero-sized
    // types; `from_size_align` cannot fail for a size of at most `size_of::<V>().max(1)`.
    Layout::from_size_align(layout.size().max(1), layout.align()).expect("value layout")
}

/// Slots freed one after another (a retired table's entries), given back to the arena
/// [`FREE_BATCH`] at a time under its lock ([`Arena::free_batch`]), and the rest when dropped.
pub(crate) struct FreeBatch<'a> {
    arena: &'a Arena,
    slots: [*mut u8; FREE_BATCH],
    len: usize,
}

/// Slots a [`FreeBatch`] gathers before it takes the arena's lock.
const FREE_BATCH: usize = 64;

impl<'a> FreeBatch<'a> {
    pub(crate) fn new(arena: &'a Arena) -> Self {
        FreeBatch {
            arena,
            slots: [ptr::null_mut(); FREE_BATCH],
            len: 0,
        }
    }

    /// Adds a slot to give back.
    ///
    /// # Safety
    /// As for [`Arena::free`] with this batch's arena.
    unsafe fn push(&mut self, p: *mut u8) {
        if self.len == FREE_BATCH {
            self.flush();
        }
        self.slots[self.len] = p;
        self.len += 1;
    }

    fn flush(&mut self) {
        let n = std::mem::take(&mut self.len);
        // SAFETY: every slot was pushed under `push`'s contract, and each is handed over once
        // (`len` is reset first).
        unsafe { self.arena.free_batch(&self.slots[..n]) };
    }
}

impl Drop for FreeBatch<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Frees an allocation when dropped: after the drop glue of what it held, also when that
/// panics.
struct Dealloc(*mut u8, Layout);

impl Drop for Dealloc {
    fn drop(&mut self) {
        // SAFETY: the holder of a `Dealloc` owns the allocation, made with this layout, and
        // frees it once, here.
        unsafe { alloc::dealloc(self.0, self.1) };
    }
}

/// Bytes of one value allocation.
#[inline]
pub(crate) fn value_size<V>() -> usize {
    value_layout::<V>().size()
}

/// Moves `value` to its own heap allocation.
#[inline]
pub(crate) fn alloc_value<V>(value: V) -> *mut V {
    let layout = value_layout::<V>();
    // SAFETY: `layout` has a non-zero size.
    let p = unsafe { alloc::alloc(layout) }.cast::<V>();
    if p.is_null() {
        alloc::handle_alloc_error(layout);
    }
    if !fits_word(p.addr()) {
        unfit_value(p.cast(), layout);
    }
    // SAFETY: `p` is a fresh allocation with `V`'s alignment and at least its size.
    unsafe { p.write(value) };
    p
}

/// Frees a value allocation whose address does not leave the value word's hash bits free
/// (never seen: see the module docs) and panics.
#[cold]
#[inline(never)]
fn unfit_value(p: *mut u8, layout: Layout) -> ! {
    // SAFETY: `alloc_value` just allocated `p` with `layout`; it holds nothing yet.
    unsafe { alloc::dealloc(p, layout) };
    panic!("tiermap: the allocator returned an address above 2^48; values cannot be stored");
}

/// Drops and frees a value allocation.
///
/// # Safety
/// `p` came from [`alloc_value`], is not freed yet, and no reference to it is used afterwards.
pub(crate) unsafe fn free_value<V>(p: *mut V) {
    // Frees the allocation even if the value's `Drop` panics (no leak).
    let _free = Dealloc(p.cast(), value_layout::<V>());
    // SAFETY: per the caller, `p` is a live, initialized allocation made with `value_layout`;
    // `_free` releases it afterwards, also on unwinding.
    unsafe { ptr::drop_in_place(p) };
}

/// Moves the value out of its allocation and frees the allocation.
///
/// # Safety
/// As for [`free_value`].
pub(crate) unsafe fn take_value<V>(p: *mut V) -> V {
    // SAFETY: per the caller, `p` is live and initialized; it is freed without dropping because
    // the value was moved out.
    unsafe {
        let v = ptr::read(p);
        alloc::dealloc(p.cast(), value_layout::<V>());
        v
    }
}
