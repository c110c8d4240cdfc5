//! The background reclaimer: one thread per process, shared by every map, that frees what maps
//! retired once its grace period is over, without waiting for further calls on the maps, and
//! gives freed memory back to the operating system.
//!
//! * **When it runs.** It is started by the first map that retires something (a removed value,
//!   a superseded or cleared table) while it is enabled, and named `tiermap-reclaim`. A map with
//!   work puts its graveyard on the reclaimer's list (a `Weak` reference: the list never keeps a
//!   map's memory alive). While the list is not empty the thread wakes every [`TICK`]; with an
//!   empty list it parks on a condition variable (no wake-ups at all) until a map registers.
//! * **What a tick does.** For each listed graveyard: seal its partly filled batch of removed
//!   values and start the grace period of everything retired since the last tick (one epoch
//!   deferral); then a few epoch collections, which run the deferrals whose grace period is over
//!   (moving their items to the graveyards' ready queues); then free every ready item, on this
//!   thread (user threads never pay for a whole table); then drop the graveyards that have
//!   nothing left from the list. Memory retired at time `t` is freed by about `t + 2 TICK` once
//!   every guard pinned at `t` is gone.
//! * **The idle watch.** Maps whose shards hold a dirty tier list their idle watch too
//!   (`raw::idle`): each tick looks at their shards, and one whose lock no operation took for a
//!   second has its migration finished and its dirty tier promoted, so that a map left alone
//!   after its writes gives its older table back. The watches are looked at every
//!   [`IDLE_TICK`] (not at every tick), and while only watches are listed the thread wakes
//!   that often.
//! * **Giving memory back.** Freed memory stays in the allocator's free lists; glibc's malloc
//!   returns it to the operating system only from the top of the heap. Once at least
//!   [`TRIM_BYTES`] were freed and a map whose garbage is now all freed has shrunk to half of
//!   its peak of live entries (a release: a `clear`, a remove-all), the reclaimer calls
//!   `malloc_trim(0)` (glibc only), which releases every free page of every arena. Not at every
//!   tick: the call holds each arena's lock while it walks it, which stalls threads that
//!   allocate meanwhile, and memory freed under steady churn is reused at once. `clear_and_release`, `reclaim` and
//!   the drop of a map that free 1 MiB or more trim at once, on the caller's thread.
//! * **Opting out.** `TIERMAP_BACKGROUND_RECLAIM=0` in the environment, or
//!   `tiermap::memory::set_background_reclaim(false)`, keeps the thread from starting (or makes
//!   a running one exit at its next wake-up); maps then defer and free their garbage from their
//!   own operations, as before the reclaimer existed. `TIERMAP_RETURN_TO_OS=0` or
//!   `set_return_to_os(false)` turns the `malloc_trim` calls off.
//!
//! Loom builds never start the thread (a model's threads are its own).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU8, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use crate::facade::Guard;

/// Time between two ticks while some map has work.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// Epoch collections per tick (see `tick`).
const COLLECT_ROUNDS: usize = 16;

/// Freed bytes after which the allocator is asked to return free pages to the operating system,
/// once no map has garbage left (and after explicit releases).
pub(crate) const TRIM_BYTES: usize = 1 << 20;

/// What the background reclaimer needs of a map's graveyard (type-erased: one list for maps of
/// every key and value type).
pub(crate) trait Reclaim: Send + Sync {
    /// Seals the partly filled value batch and starts the grace period of everything retired.
    fn seal_and_defer(self: Arc<Self>, guard: &Guard);
    /// Frees every item past its grace period; the bytes freed.
    fn free_ready(&self) -> usize;
    /// Takes the graveyard off the list if it has nothing left; whether to drop its entry.
    fn unregister(&self) -> bool;
    /// Whether the map has shrunk to at most half of its most live entries since the last trim,
    /// or its idle watch promoted a shard since (a release: what it freed will not be reused by
    /// it).
    fn shrank(&self) -> bool;
    /// Starts a new peak from what the map holds now (after a trim).
    fn reset_peak(&self);
}

/// What the background reclaimer needs of a map's idle watch (`raw::idle`; type-erased).
pub(crate) trait Idle: Send + Sync {
    /// Looks at every shard once, promoting those that have been quiet long enough; whether to
    /// keep the watch on the list (some shard still has a dirty tier).
    fn step(&self, guard: &Guard) -> bool;
}

/// Time between two ticks while the only listed work is idle watches (no garbage waits).
pub(crate) const IDLE_TICK: Duration = Duration::from_millis(100);

/// A setting read from the environment on first use unless set before.
struct Setting {
    state: AtomicU8,
    var: &'static str,
}

const UNSET: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

impl Setting {
    const fn new(var: &'static str) -> Self {
        Setting {
            state: AtomicU8::new(UNSET),
            var,
        }
    }

    fn get(&self) -> bool {
        // Relaxed: an independent flag; nothing else is published through it.
        match self.state.load(Relaxed) {
            ON => true,
            OFF => false,
            _ => {
                let off = std::env::var_os(self.var).is_some_and(|v| v == "0" || v == "false");
                let want = if off { OFF } else { ON };
                // A concurrent `set` wins over the environment.
                let _ = self.state.compare_exchange(UNSET, want, Relaxed, Relaxed);
                self.state.load(Relaxed) == ON
            }
        }
    }

    fn set(&self, on: bool) -> bool {
        let old = self.get();
        // Relaxed: as in `get`.
        self.state.store(if on { ON } else { OFF }, Relaxed);
        old
    }
}

static THREAD: Setting = Setting::new("TIERMAP_BACKGROUND_RECLAIM");
static TRIM: Setting = Setting::new("TIERMAP_RETURN_TO_OS");

/// The list of graveyards with work, and the thread's state.
struct Registry {
    maps: Vec<Weak<dyn Reclaim>>,
    /// Maps whose shards may hold a dirty tier to promote once they are quiet (`raw::idle`).
    watched: Vec<Weak<dyn Idle>>,
    /// The thread exists (started and not exited).
    running: bool,
    /// The thread waits on `WAKE` with nothing to do.
    parked: bool,
    /// The thread waits on `WAKE` for at most [`IDLE_TICK`], with only idle watches listed: a
    /// graveyard that registers wakes it, so that its work waits no longer than a [`TICK`].
    napping: bool,
    /// Threads ever started (for tests and `memory::background_reclaim_starts`).
    starts: usize,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    maps: Vec::new(),
    watched: Vec::new(),
    running: false,
    parked: false,
    napping: false,
    starts: 0,
});
static WAKE: Condvar = Condvar::new();
/// Mirrors `Registry::running` for lock-free reads on the retire path.
static RUNNING: AtomicUsize = AtomicUsize::new(0);
/// Bytes freed since the last `malloc_trim`, by any thread (the reclaimer trims when it passes
/// [`TRIM_BYTES`], so that memory freed by maps' own operations comes back to the OS too).
static SINCE_TRIM: AtomicUsize = AtomicUsize::new(0);

/// Ticks in progress (0 or 1 but for tests, which mark their own): while one runs, this thread
/// may be pinned or freeing a popped item, and `reclaim` waits for it a little longer than for
/// other threads' guards (see `RawMap::reclaim`).
static TICKING: AtomicUsize = AtomicUsize::new(0);

/// Marks a tick in progress for as long as it lives (see [`TICKING`]).
pub(crate) struct TickMark(());

impl TickMark {
    pub(crate) fn enter() -> Self {
        // Relaxed: a hint for `reclaim`'s patience; nothing is published through it.
        TICKING.fetch_add(1, Relaxed);
        TickMark(())
    }
}

impl Drop for TickMark {
    fn drop(&mut self) {
        // Relaxed: as in `enter`.
        TICKING.fetch_sub(1, Relaxed);
    }
}

/// Whether the background reclaimer is in the middle of a tick (pinned, or freeing what it
/// popped): what it holds back from `reclaim` is about to be released.
pub(crate) fn ticking() -> bool {
    // Relaxed: as in `TickMark::enter`.
    TICKING.load(Relaxed) != 0
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    // The registry is consistent at every point where this module could panic.
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether maps should hand their work to the background thread.
#[inline]
pub(crate) fn enabled() -> bool {
    !cfg!(tiermap_loom) && THREAD.get()
}

/// Whether the thread is running now (a hint for the retire path: if it is not, the retirer
/// defers its own garbage at once).
#[inline]
pub(crate) fn running() -> bool {
    // Relaxed: a hint; a retirer that misses a start defers its garbage itself, which is
    // always allowed.
    RUNNING.load(Relaxed) != 0
}

/// Puts a graveyard on the list, starting or waking the thread.
pub(crate) fn register(map: Weak<dyn Reclaim>) {
    let mut reg = registry();
    reg.maps.push(map);
    start_or_wake(reg);
}

/// Puts a map's idle watch on the list, starting or waking the thread.
pub(crate) fn watch(map: Weak<dyn Idle>) {
    let mut reg = registry();
    reg.watched.push(map);
    start_or_wake(reg);
}

/// Starts the thread if it is not running, or wakes it if it is parked (after a listing).
fn start_or_wake(mut reg: std::sync::MutexGuard<'_, Registry>) {
    if !reg.running {
        let spawned = std::thread::Builder::new()
            .name("tiermap-reclaim".into())
            .spawn(run);
        match spawned {
            Ok(_) => {
                reg.running = true;
                reg.starts += 1;
                RUNNING.store(1, Relaxed);
            }
            // No thread (a process limit, say): the maps still free their garbage from their
            // own operations and `reclaim`, and keep their tiers until misses promote them;
            // the list is retried at the next registration.
            Err(_) => {
                reg.maps.clear();
                reg.watched.clear();
            }
        }
    } else if reg.parked || reg.napping {
        WAKE.notify_one();
    }
}

/// Turns the thread on or off (see the module docs); returns the previous setting.
pub(crate) fn set_enabled(on: bool) -> bool {
    let old = THREAD.set(on);
    if !on {
        // Let a parked thread see the change and exit.
        let _reg = registry();
        WAKE.notify_all();
    }
    old
}

/// Turns `malloc_trim` calls on or off; returns the previous setting.
pub(crate) fn set_trim(on: bool) -> bool {
    TRIM.set(on)
}

/// Whether the thread is running, and how many times one was started.
pub(crate) fn status() -> (bool, usize, bool) {
    let reg = registry();
    (reg.running, reg.starts, reg.parked)
}

/// What one loop of the thread works on: the listed graveyards and idle watches still alive.
type Listed = (Vec<Arc<dyn Reclaim>>, Vec<Arc<dyn Idle>>);

/// The thread's loop.
fn run() {
    // When the idle watches were last looked at: at most every `IDLE_TICK`, even while garbage
    // makes the thread tick every `TICK` (a look `try_lock`s each watched shard, and a shard
    // written to continuously needs no look more often than its quiet period can end).
    let mut looked: Option<std::time::Instant> = None;
    loop {
        let (maps, watched): Listed = {
            let mut reg = registry();
            loop {
                reg.maps.retain(|w| w.strong_count() > 0);
                reg.watched.retain(|w| w.strong_count() > 0);
                if !enabled() {
                    reg.running = false;
                    reg.parked = false;
                    RUNNING.store(0, Relaxed);
                    return;
                }
                if !reg.maps.is_empty() || !reg.watched.is_empty() {
                    break;
                }
                reg.parked = true;
                reg = WAKE.wait(reg).unwrap_or_else(|p| p.into_inner());
                reg.parked = false;
            }
            (
                reg.maps.iter().filter_map(Weak::upgrade).collect(),
                reg.watched.iter().filter_map(Weak::upgrade).collect(),
            )
        };
        let due = looked.is_none_or(|t| t.elapsed() >= IDLE_TICK);
        let unwatched = if due && !watched.is_empty() {
            looked = Some(std::time::Instant::now());
            look_at_idle(&watched)
        } else {
            Vec::new()
        };
        drop(watched);
        if !unwatched.is_empty() {
            unlist(&mut registry().watched, &unwatched);
        }
        if maps.is_empty() {
            // Only idle watches: look again in `IDLE_TICK`, or as soon as a graveyard registers.
            let mut reg = registry();
            if reg.maps.is_empty() {
                reg.napping = true;
                reg = WAKE
                    .wait_timeout(reg, IDLE_TICK)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                reg.napping = false;
            }
            continue;
        }
        note_freed(tick(&maps));
        let mut released = false;
        let done: Vec<Weak<dyn Reclaim>> = maps
            .iter()
            .filter(|m| m.unregister())
            .inspect(|m| released |= m.shrank())
            .map(Arc::downgrade)
            .collect();
        // `malloc_trim` holds each arena's lock while it walks the arena, so a thread that
        // allocates meanwhile waits for it (0.5-0.7 ms at the worst step of a 100,000-key
        // churn). Memory freed under churn (a promotion retires a table the size of the one
        // that replaces it) is reused at once: trim only after a *release*, when a map whose
        // garbage is now all freed has at most half of its peak of live entries since the last
        // trim (a `clear`, a remove-all).
        // Relaxed: a heuristic amount; the trim itself synchronizes with the frees (locks).
        let since = SINCE_TRIM.load(Relaxed);
        if released && since >= TRIM_BYTES {
            SINCE_TRIM.store(0, Relaxed);
            return_to_os();
            for m in &maps {
                m.reset_peak();
            }
        }
        // Drop the strong references before sleeping: a map dropped meanwhile is freed by its
        // owner, not kept alive by this thread.
        drop(maps);
        if !done.is_empty() {
            unlist(&mut registry().maps, &done);
        }
        std::thread::sleep(TICK);
    }
}

/// Takes one entry per item of `done` off `list`: exactly one, because a map that listed itself
/// again after the thread cleared its flag (`Reclaim::unregister`, `IdleWatch::step`) has added
/// a second entry, which must stay.
fn unlist<T: ?Sized>(list: &mut Vec<Weak<T>>, done: &[Weak<T>]) {
    for d in done {
        if let Some(i) = list.iter().position(|w| Weak::ptr_eq(w, d)) {
            list.swap_remove(i);
        }
    }
}

/// One look of each listed idle watch (`Idle::step`); the watches to take off the list. A
/// panicking `Drop` of a key or value (run by a promotion's graveyard service) is caught: the
/// watch stays listed and looks again at the next tick.
fn look_at_idle(watched: &[Arc<dyn Idle>]) -> Vec<Weak<dyn Idle>> {
    if watched.is_empty() {
        return Vec::new();
    }
    let _mark = TickMark::enter();
    let guard = crossbeam_epoch::pin();
    let mut done = Vec::new();
    for w in watched {
        let keep = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.step(&guard)));
        if let Ok(false) = keep {
            done.push(Arc::downgrade(w));
        }
    }
    guard.flush();
    done
}

/// One round over the listed graveyards; the bytes freed. A panicking `Drop` of a key or value
/// is caught (the rest is still freed, and the thread keeps running).
fn tick(maps: &[Arc<dyn Reclaim>]) -> usize {
    let _mark = TickMark::enter();
    let guard = crossbeam_epoch::pin();
    for m in maps {
        let m = m.clone();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.seal_and_defer(&guard)));
    }
    guard.flush();
    drop(guard);
    // Collections: an epoch deferral becomes runnable two epoch advances after it was made,
    // each pin + flush tries one advance and runs at most 8 sealed bags of the global queue,
    // where every thread's flushes (one per retirement) wait in order. 16 rounds (a few
    // microseconds) work through 128 of them per tick.
    for _ in 0..COLLECT_ROUNDS {
        crossbeam_epoch::pin().flush();
    }
    let mut freed = 0;
    for m in maps {
        loop {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.free_ready())) {
                Ok(bytes) => {
                    freed += bytes;
                    break;
                }
                // A `Drop` panicked: the item was re-queued past the culprit; keep freeing.
                Err(_) => continue,
            }
        }
    }
    freed
}

/// Asks the allocator to give free memory back to the operating system (glibc: `malloc_trim`,
/// which releases the free pages of every arena, not only the top of the heap). Does nothing
/// with other C libraries, under Miri, or when turned off. Whether it did anything.
pub(crate) fn return_to_os() -> bool {
    if !TRIM.get() {
        return false;
    }
    trim()
}

/// Counts `bytes` freed toward the background reclaimer's next `malloc_trim`.
#[inline]
pub(crate) fn note_freed(bytes: usize) {
    if bytes > 0 {
        // Relaxed: a heuristic amount.
        SINCE_TRIM.fetch_add(bytes, Relaxed);
    }
}

/// After an explicit release (`reclaim`, `clear_and_release`, the drop of a map) that freed
/// `freed` bytes: calls [`return_to_os`] now, on the caller's thread, if that is worth it.
pub(crate) fn freed(freed: usize) {
    if freed >= TRIM_BYTES && return_to_os() {
        // Relaxed: as in `note_freed`.
        SINCE_TRIM.store(0, Relaxed);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu", not(miri)))]
fn trim() -> bool {
    extern "C" {
        fn malloc_trim(pad: usize) -> std::os::raw::c_int;
    }
    // SAFETY: glibc's `malloc_trim` takes a byte count, is thread-safe (it locks each arena),
    // and only returns free pages to the kernel.
    unsafe { malloc_trim(0) };
    true
}

#[cfg(not(all(target_os = "linux", target_env = "gnu", not(miri))))]
fn trim() -> bool {
    false
}
