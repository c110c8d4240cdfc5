//! A publication witness for the loom models ([`Witness`]): the one piece of loom
//! instrumentation the engine's objects carry. Here rather than in `facade` because it needs
//! `unsafe` (a loom cell shared between threads), which the crate keeps inside `raw`.

/// A publication witness: a zero-sized nothing in normal builds; in loom builds a
/// `loom::cell::UnsafeCell` created (a write, for loom) when the object holding it is built and
/// read by [`Witness::check`] each time a thread reaches that object through a published
/// pointer.
///
/// The plain fields of an entry (its key, an inline value) and of a tier (its table's
/// slot array and size) are ordinary memory, invisible to loom: a reader that reached them through a
/// pointer loaded without the happens-before edge of a release/acquire pair would read them
/// silently. With the witness, loom reports that read as a "Causality violation" (the object's
/// creation does not happen-before it), so a weakened publication shows up even where the
/// model's other accesses never touch the unpublished bytes.
pub(crate) struct Witness {
    #[cfg(tiermap_loom)]
    cell: loom::cell::UnsafeCell<()>,
}

// SAFETY: loom builds only: the cell holds `()`, is never written after creation and is read
// only to let loom check causality; sharing it between threads is what it exists for.
#[cfg(tiermap_loom)]
unsafe impl Sync for Witness {}

impl Witness {
    /// A witness created now, by the current thread.
    #[inline(always)]
    pub(crate) fn new() -> Self {
        Witness {
            #[cfg(tiermap_loom)]
            cell: loom::cell::UnsafeCell::new(()),
        }
    }

    /// Loom builds: asserts that the holder's creation happens-before this access (a no-op in
    /// normal builds).
    #[inline(always)]
    pub(crate) fn check(&self) {
        #[cfg(tiermap_loom)]
        self.cell.with(|_| ());
    }
}
