//! The export's order (tenant, user, event time) built while the window is read.
//!
//! A read waits on the broker most of the time and leaves a core idle, so the fixes are
//! sorted in runs on a thread of their own as they arrive; what is left at the end is the
//! last run and a merge of the runs, which feeds the writer directly.

use std::cmp::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;

use locus_schemas::LocationFix;

use crate::by_user_then_time;

/// Fixes of a run sorted together (128 Ki: a few runs for a million fixes, each sorted in
/// well under the time the read takes to bring the next).
pub const RUN: usize = 128 * 1024;

type Run = Vec<LocationFix>;

/// Collects fixes and sorts them in runs on a background thread.
#[derive(Debug)]
pub struct Sorter {
    run: Vec<LocationFix>,
    run_len: usize,
    /// Full runs go to the sorting thread; without one (it could not be started), they are
    /// sorted here.
    sorting: Option<(mpsc::Sender<Run>, JoinHandle<Vec<Run>>)>,
    sorted: Vec<Vec<LocationFix>>,
    #[cfg(test)]
    len: usize,
}

impl Sorter {
    pub fn new(run_len: usize) -> Sorter {
        let run_len = run_len.max(1);
        let (tx, rx) = mpsc::channel::<Vec<LocationFix>>();
        let sorting = std::thread::Builder::new()
            .name("replay-sort".into())
            .spawn(move || {
                rx.into_iter()
                    .map(|mut run| {
                        run.sort_unstable_by(by_user_then_time);
                        run
                    })
                    .collect()
            })
            .ok()
            .map(|handle| (tx, handle));
        Sorter {
            run: Vec::new(),
            run_len,
            sorting,
            sorted: vec![],
            #[cfg(test)]
            len: 0,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    pub fn push(&mut self, fix: LocationFix) {
        if self.run.capacity() == 0 {
            self.run.reserve_exact(self.run_len);
        }
        self.run.push(fix);
        #[cfg(test)]
        {
            self.len += 1;
        }
        if self.run.len() >= self.run_len {
            let run = std::mem::take(&mut self.run);
            match &self.sorting {
                Some((tx, _)) => {
                    if let Err(mpsc::SendError(mut run)) = tx.send(run) {
                        // The thread is gone (it panicked): sort here.
                        run.sort_unstable_by(by_user_then_time);
                        self.sorted.push(run);
                    }
                }
                None => {
                    let mut run = run;
                    run.sort_unstable_by(by_user_then_time);
                    self.sorted.push(run);
                }
            }
        }
    }

    /// Every fix pushed, in order.
    pub fn finish(mut self) -> Merge {
        let mut last = std::mem::take(&mut self.run);
        // Sorted here while the thread finishes the run it may still have.
        last.sort_unstable_by(by_user_then_time);
        let mut runs = std::mem::take(&mut self.sorted);
        if let Some((tx, handle)) = self.sorting.take() {
            drop(tx);
            match handle.join() {
                Ok(sorted) => runs.extend(sorted),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        runs.push(last);
        Merge::new(runs)
    }
}

/// The fixes of sorted runs in one order: a binary heap of the runs by their next fix.
#[derive(Debug)]
pub struct Merge {
    runs: Vec<std::vec::IntoIter<LocationFix>>,
    /// Indices into `runs`, a min-heap by each run's next fix.
    heap: Vec<usize>,
    left: usize,
}

impl Merge {
    fn new(runs: Vec<Vec<LocationFix>>) -> Merge {
        let left = runs.iter().map(Vec::len).sum();
        let runs: Vec<_> = runs
            .into_iter()
            .filter(|r| !r.is_empty())
            .map(Vec::into_iter)
            .collect();
        let mut m = Merge {
            heap: (0..runs.len()).collect(),
            runs,
            left,
        };
        for i in (0..m.heap.len() / 2).rev() {
            m.sift_down(i);
        }
        m
    }

    /// Whether heap entry `a`'s next fix comes before `b`'s (runs in the heap are never empty).
    fn less(&self, a: usize, b: usize) -> bool {
        let head = |i: usize| self.runs[self.heap[i]].as_slice().first();
        match (head(a), head(b)) {
            (Some(fa), Some(fb)) => by_user_then_time(fa, fb) == Ordering::Less,
            _ => false,
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < self.heap.len() && self.less(l, least) {
                least = l;
            }
            if r < self.heap.len() && self.less(r, least) {
                least = r;
            }
            if least == i {
                return;
            }
            self.heap.swap(i, least);
            i = least;
        }
    }
}

impl Iterator for Merge {
    type Item = LocationFix;

    fn next(&mut self) -> Option<LocationFix> {
        let &top = self.heap.first()?;
        let fix = self.runs[top].next()?;
        if self.runs[top].as_slice().is_empty() {
            // Its memory goes now, not with the last run.
            self.runs[top] = Vec::new().into_iter();
            let last = self.heap.len() - 1;
            self.heap.swap(0, last);
            self.heap.pop();
        }
        if !self.heap.is_empty() {
            self.sift_down(0);
        }
        self.left -= 1;
        Some(fix)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Merge {}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(user: &str, ts: i64, seq: i64) -> LocationFix {
        LocationFix {
            tenant: "acme".into(),
            user_id: user.into(),
            device_id: "d".into(),
            seq,
            ts,
            lat: 52.5,
            lon: 13.4,
            accuracy_m: None,
            altitude_m: None,
            speed_mps: None,
            heading_deg: None,
            battery_pct: None,
            activity: None,
            source: None,
            received_at: ts,
        }
    }

    /// Any number of runs, full or not, with equal keys across runs, merge into the order a
    /// plain sort gives.
    #[test]
    fn runs_merge_into_one_order() {
        for (n, run) in [
            (0, 4),
            (1, 4),
            (7, 3),
            (1000, 7),
            (1000, 1000),
            (1000, 1),
            (999, 10),
        ] {
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ n as u64;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let fixes: Vec<LocationFix> = (0..n)
                .map(|i| fix(&format!("u{}", next() % 13), (next() % 50) as i64, i as i64))
                .collect();
            let mut sorter = Sorter::new(run);
            for f in fixes.clone() {
                sorter.push(f);
            }
            assert_eq!(sorter.len(), n);
            let merged = sorter.finish();
            assert_eq!(merged.len(), n);
            let got: Vec<LocationFix> = merged.collect();
            let mut want = fixes;
            want.sort_by(by_user_then_time);
            assert_eq!(got, want, "{n} fixes in runs of {run}");
        }
    }
}
