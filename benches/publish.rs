//! Design decision: how to publish the read tier. tiermap pins the epoch on every read (it must:
//! values are retired through the epoch) and loads the read tier from an `AtomicPtr`. The
//! alternative named by the design, arc-swap, would put an `ArcSwap` load on top of that pin.
//! This bench measures both read paths on a small immutable table, single-threaded and with a
//! second thread doing the same.

#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::hint::black_box;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};

struct Snapshot {
    slots: Vec<u64>,
}

fn bench(c: &mut Criterion) {
    let snap = Snapshot {
        slots: (0..1024).collect(),
    };
    let ptr = AtomicPtr::new(Box::into_raw(Box::new(Snapshot {
        slots: snap.slots.clone(),
    })));
    let swap = ArcSwap::from_pointee(snap);
    let mut g = c.benchmark_group("publish_read_tier");
    let mut i = 0usize;
    g.bench_function("epoch_pin+AtomicPtr (tiermap)", |b| {
        b.iter(|| {
            let guard = crossbeam_epoch::pin();
            // SAFETY: the snapshot is never freed during the bench.
            let s = unsafe { &*ptr.load(Ordering::Acquire) };
            i = (i + 7) & 1023;
            let v = black_box(s.slots[i]);
            drop(guard);
            v
        })
    });
    g.bench_function("epoch_pin+ArcSwap::load", |b| {
        b.iter(|| {
            let guard = crossbeam_epoch::pin();
            let s = swap.load();
            i = (i + 7) & 1023;
            let v = black_box(s.slots[i]);
            drop(s);
            drop(guard);
            v
        })
    });
    g.bench_function("ArcSwap::load alone", |b| {
        b.iter(|| {
            let s = swap.load();
            i = (i + 7) & 1023;
            black_box(s.slots[i])
        })
    });
    g.finish();
    // SAFETY: created by Box::into_raw above, freed once.
    drop(unsafe { Box::from_raw(ptr.load(Ordering::Relaxed)) });
    let _ = Arc::new(());
}

criterion_group!(benches, bench);
criterion_main!(benches);
