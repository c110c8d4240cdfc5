//! Zero-filled slices ([`zeroed_slice`]) of types whose all-zero bit pattern is valid
//! ([`ZeroInit`]): big tables are allocated with `alloc_zeroed`, which for large sizes maps
//! fresh zero pages instead of writing them.

use crate::facade::{AtomicPtr, AtomicUsize};

/// Types whose all-zero bit pattern is a valid value (atomics holding 0 or null, and structs of
/// them). Lets big tables be allocated with `alloc_zeroed`, which for large sizes maps fresh
/// zero pages instead of writing them.
///
/// # Safety
/// An all-zero bit pattern must be a valid `Self`, equal to `zero()`, in non-loom builds.
pub(crate) unsafe trait ZeroInit: Sized {
    /// The zero value (used to build slices in loom builds, whose atomics must be constructed).
    fn zero() -> Self;
}

// SAFETY: std atomics have the same in-memory representation as their integer or pointer
// types, for which all-zero bytes are 0 or null.
unsafe impl<T> ZeroInit for AtomicPtr<T> {
    fn zero() -> Self {
        AtomicPtr::new(std::ptr::null_mut())
    }
}
// SAFETY: as above.
unsafe impl ZeroInit for AtomicUsize {
    fn zero() -> Self {
        AtomicUsize::new(0)
    }
}

/// A boxed slice of `n` zero values.
pub(crate) fn zeroed_slice<T: ZeroInit>(n: usize) -> Box<[T]> {
    #[cfg(not(tiermap_loom))]
    {
        if n == 0 || size_of::<T>() == 0 {
            return (0..n).map(|_| T::zero()).collect();
        }
        let layout = std::alloc::Layout::array::<T>(n).expect("table size overflows");
        // SAFETY: `layout` has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: `p` is an allocation of `n` `T`s made with the global allocator and the
        // layout `Box<[T]>` uses; all-zero bytes are valid `T`s (`ZeroInit`).
        unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n)) }
    }
    #[cfg(tiermap_loom)]
    {
        (0..n).map(|_| T::zero()).collect()
    }
}
