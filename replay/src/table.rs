//! The export's fixes in memory, and their order: tenant, user, event time (then device and
//! sequence).
//!
//! A window repeats few strings (a tenant or a few, one id per user and device, a handful of
//! activities and sources), so each fix is stored as it is read as a fixed-size [`Row`] whose
//! strings are numbers into one set of the distinct strings: nothing is allocated per fix,
//! and a row is half the size of a `LocationFix` and its strings. The order is made once, after
//! the read: the distinct strings are sorted (thousands, not millions), which turns every
//! comparison of the export's order into a comparison of integers, and one sort of the row
//! numbers follows. Writers then take the fixes by position in that order: row formats as
//! [`FixRef`]s, Parquet as rows gathered a row group at a time on its encoding threads.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use locus_schemas::FixRef;

/// The number of an absent optional string.
const NONE: u32 = u32::MAX;

/// The most fixes a table holds: each fix has at most five strings, so their numbers stay
/// below [`NONE`], and row numbers fit a `u32` (`replay.max_fixes` is capped at this).
pub const MAX_ROWS: usize = (NONE / 5) as usize;

/// The distinct strings of a table; a string's number is its index in `values`. Looked up
/// for every string of every fix read, with a fast hasher seeded per process (the strings
/// come from devices: a fixed seed would let them collide on purpose). Each string is stored
/// once, shared by the map and the list: a window of device-chosen strings all distinct
/// costs their bytes once, not twice.
#[derive(Debug, Default)]
pub struct Strings {
    ids: HashMap<Arc<str>, u32, foldhash::fast::RandomState>,
    values: Vec<Arc<str>>,
}

impl Strings {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(id) = self.ids.get(s) {
            return *id;
        }
        // Below NONE as long as the table holds at most MAX_ROWS fixes.
        let id = u32::try_from(self.values.len())
            .ok()
            .filter(|id| *id < NONE)
            .expect("at most 5 strings a fix, at most MAX_ROWS fixes");
        let shared: Arc<str> = s.into();
        self.values.push(shared.clone());
        self.ids.insert(shared, id);
        id
    }

    fn opt(&mut self, s: Option<&str>) -> u32 {
        s.map_or(NONE, |s| self.id(s))
    }

    /// The string numbered `id`; `None` for an absent one.
    pub fn get(&self, id: u32) -> Option<&str> {
        self.values.get(id as usize).map(|s| &**s)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// One fix, its strings numbered. Optional numbers are valid when their bit of `present` is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub seq: i64,
    pub ts: i64,
    pub received_at: i64,
    pub lat: f64,
    pub lon: f64,
    pub altitude_m: f64,
    pub tenant: u32,
    pub user_id: u32,
    pub device_id: u32,
    /// [`NONE`] when absent, as `source`.
    pub activity: u32,
    pub source: u32,
    pub accuracy_m: f32,
    pub speed_mps: f32,
    pub heading_deg: f32,
    pub battery_pct: i32,
    pub present: u8,
}

const ACCURACY: u8 = 1;
const ALTITUDE: u8 = 2;
const SPEED: u8 = 4;
const HEADING: u8 = 8;
const BATTERY: u8 = 16;

impl Row {
    fn has(&self, bit: u8) -> bool {
        self.present & bit != 0
    }

    pub fn accuracy_m(&self) -> Option<f32> {
        self.has(ACCURACY).then_some(self.accuracy_m)
    }

    pub fn altitude_m(&self) -> Option<f64> {
        self.has(ALTITUDE).then_some(self.altitude_m)
    }

    pub fn speed_mps(&self) -> Option<f32> {
        self.has(SPEED).then_some(self.speed_mps)
    }

    pub fn heading_deg(&self) -> Option<f32> {
        self.has(HEADING).then_some(self.heading_deg)
    }

    pub fn battery_pct(&self) -> Option<i32> {
        self.has(BATTERY).then_some(self.battery_pct)
    }
}

/// Fixes as they are read; [`Table::sort`] puts them in the export's order.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Row>,
    strings: Strings,
}

impl Table {
    pub fn with_capacity(rows: usize) -> Table {
        Table {
            rows: Vec::with_capacity(rows),
            strings: Strings::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn push(&mut self, f: FixRef<'_>) {
        let s = &mut self.strings;
        let bit = |set: bool, b: u8| if set { b } else { 0 };
        self.rows.push(Row {
            seq: f.seq,
            ts: f.ts,
            received_at: f.received_at,
            lat: f.lat,
            lon: f.lon,
            altitude_m: f.altitude_m.unwrap_or_default(),
            tenant: s.id(f.tenant),
            user_id: s.id(f.user_id),
            device_id: s.id(f.device_id),
            activity: s.opt(f.activity),
            source: s.opt(f.source),
            accuracy_m: f.accuracy_m.unwrap_or_default(),
            speed_mps: f.speed_mps.unwrap_or_default(),
            heading_deg: f.heading_deg.unwrap_or_default(),
            battery_pct: f.battery_pct.unwrap_or_default(),
            present: bit(f.accuracy_m.is_some(), ACCURACY)
                | bit(f.altitude_m.is_some(), ALTITUDE)
                | bit(f.speed_mps.is_some(), SPEED)
                | bit(f.heading_deg.is_some(), HEADING)
                | bit(f.battery_pct.is_some(), BATTERY),
        });
    }

    /// The fixes in the export's order: by tenant, user, event time, device, sequence (strings
    /// compared as Rust compares `str`, byte by byte).
    pub fn sort(self) -> Sorted {
        let Table { rows, strings } = self;
        // Each string's place among all of them: comparing places is comparing strings.
        let mut by_value: Vec<u32> = (0..strings.values.len() as u32).collect();
        by_value
            .sort_unstable_by(|a, b| strings.values[*a as usize].cmp(&strings.values[*b as usize]));
        let mut place = vec![0u32; by_value.len()];
        for (p, id) in by_value.into_iter().enumerate() {
            place[id as usize] = p as u32;
        }
        let mut keys: Vec<Key> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| Key {
                who: (u64::from(place[r.tenant as usize]) << 32)
                    | u64::from(place[r.user_id as usize]),
                ts: r.ts,
                seq: r.seq,
                device: place[r.device_id as usize],
                row: i as u32,
            })
            .collect();
        sort_on_two_threads(&mut keys);
        Sorted {
            rows,
            strings,
            order: keys,
        }
    }
}

/// A row's place in the export's order: tenant and user (their strings' places), event time,
/// device, sequence, then the row itself (duplicates are gone, so it only makes ties total).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    who: u64,
    ts: i64,
    seq: i64,
    device: u32,
    row: u32,
}

impl Ord for Key {
    fn cmp(&self, o: &Key) -> Ordering {
        (self.who, self.ts, self.device, self.seq, self.row)
            .cmp(&(o.who, o.ts, o.device, o.seq, o.row))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, o: &Key) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// Sorts `keys`: a large table split at its median, each half sorted on a core of its own (the
/// sort is what an export waits for between the end of its read and its first row group).
fn sort_on_two_threads(keys: &mut [Key]) {
    if keys.len() < 1 << 16 {
        keys.sort_unstable();
        return;
    }
    let mid = keys.len() / 2;
    keys.select_nth_unstable(mid);
    let (low, high) = keys.split_at_mut(mid);
    std::thread::scope(|s| {
        let low = std::thread::Builder::new()
            .name("replay-sort".into())
            .spawn_scoped(s, || low.sort_unstable());
        high.sort_unstable();
        if let Ok(low) = low
            && let Err(panic) = low.join()
        {
            std::panic::resume_unwind(panic);
        }
    });
    // A thread that could not be started left its half unsorted.
    if !keys[..mid].is_sorted() {
        keys[..mid].sort_unstable();
    }
}

/// A table's fixes in the export's order, read by position.
#[derive(Debug)]
pub struct Sorted {
    rows: Vec<Row>,
    strings: Strings,
    /// The rows' keys, in order.
    order: Vec<Key>,
}

impl Sorted {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn strings(&self) -> &Strings {
        &self.strings
    }

    /// The `i`th fix in order.
    pub fn get(&self, i: usize) -> FixRef<'_> {
        let r = &self.rows[self.order[i].row as usize];
        let s = |id: u32| self.strings.get(id).unwrap_or_default();
        FixRef {
            tenant: s(r.tenant),
            user_id: s(r.user_id),
            device_id: s(r.device_id),
            seq: r.seq,
            ts: r.ts,
            lat: r.lat,
            lon: r.lon,
            accuracy_m: r.accuracy_m(),
            altitude_m: r.altitude_m(),
            speed_mps: r.speed_mps(),
            heading_deg: r.heading_deg(),
            battery_pct: r.battery_pct(),
            activity: self.strings.get(r.activity),
            source: self.strings.get(r.source),
            received_at: r.received_at,
        }
    }

    /// The fixes at `range` of the order.
    pub fn iter(&self, range: Range<usize>) -> impl Iterator<Item = FixRef<'_>> {
        range.map(|i| self.get(i))
    }

    /// The rows at `range` of the order, appended to `out`.
    pub fn gather(&self, range: Range<usize>, out: &mut Vec<Row>) {
        out.extend(self.order[range].iter().map(|k| self.rows[k.row as usize]));
    }
}

#[cfg(test)]
mod tests {
    use locus_schemas::LocationFix;

    use super::*;

    fn fix(user: &str, device: &str, ts: i64, seq: i64, i: usize) -> LocationFix {
        LocationFix {
            tenant: if i.is_multiple_of(3) { "beta" } else { "acme" }.into(),
            user_id: user.into(),
            device_id: device.into(),
            seq,
            ts,
            lat: 52.5,
            lon: 13.4,
            accuracy_m: i.is_multiple_of(2).then_some(i as f32),
            altitude_m: i.is_multiple_of(3).then_some(i as f64),
            speed_mps: i.is_multiple_of(4).then_some(1.5),
            heading_deg: i.is_multiple_of(5).then_some(90.0),
            battery_pct: i.is_multiple_of(6).then_some(i as i32 % 100),
            activity: i.is_multiple_of(7).then(|| "walking".to_string()),
            source: (i % 2 == 1).then(|| if i % 4 == 1 { "gps" } else { "network" }.into()),
            received_at: ts + 5,
        }
    }

    fn by_user_then_time(a: &LocationFix, b: &LocationFix) -> std::cmp::Ordering {
        (&a.tenant, &a.user_id, a.ts, &a.device_id, a.seq).cmp(&(
            &b.tenant,
            &b.user_id,
            b.ts,
            &b.device_id,
            b.seq,
        ))
    }

    /// Whatever order fixes arrive in, with strings first seen in any order (so their numbers
    /// say nothing of their order), the table gives them back whole, in the order a sort of the
    /// fixes themselves gives.
    #[test]
    fn fixes_come_back_whole_in_the_exports_order() {
        // 70,000: past the size where the sort splits over two threads.
        for n in [0usize, 1, 2, 7, 1000, 5000, 70_000] {
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ n as u64;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let fixes: Vec<LocationFix> = (0..n)
                .map(|i| {
                    let u = next() % 37;
                    fix(
                        &format!("u{u}"),
                        &format!("d{}", next() % 3),
                        (next() % 50) as i64 - 25,
                        (next() % 4) as i64 - i as i64,
                        i,
                    )
                })
                .collect();
            let mut table = Table::with_capacity(4);
            for f in &fixes {
                table.push(f.as_fix_ref());
            }
            assert_eq!(table.len(), n);
            let sorted = table.sort();
            assert_eq!(sorted.len(), n);
            let got: Vec<LocationFix> = sorted.iter(0..n).map(|f| f.to_fix()).collect();
            let mut want = fixes;
            want.sort_by(by_user_then_time);
            assert_eq!(got, want, "{n} fixes");
            let mut rows = vec![];
            sorted.gather(0..n, &mut rows);
            for (r, w) in rows.iter().zip(&want) {
                assert_eq!(sorted.strings().get(r.user_id), Some(w.user_id.as_str()));
                assert_eq!(r.battery_pct(), w.battery_pct);
                assert_eq!(sorted.strings().get(r.activity), w.activity.as_deref());
            }
        }
    }

    /// An empty string is a string: it stays apart from an absent one, and a string is stored
    /// once however many fixes carry it.
    #[test]
    fn empty_and_absent_strings_stay_apart() {
        let mut table = Table::with_capacity(0);
        let mut a = fix("u", "d", 1, 1, 1);
        a.activity = Some(String::new());
        let mut b = fix("u", "d", 2, 2, 1);
        b.activity = None;
        for f in [&a, &b, &a] {
            table.push(f.as_fix_ref());
        }
        let sorted = table.sort();
        let got: Vec<Option<String>> = sorted.iter(0..3).map(|f| f.to_fix().activity).collect();
        assert_eq!(got, [Some(String::new()), Some(String::new()), None]);
        // tenant, user, device, "", and the source of these fixes
        assert_eq!(sorted.strings().len(), 5);
    }

    #[test]
    fn the_row_limit_keeps_numbers_below_absent() {
        // numbers 0..5 * MAX_ROWS, all below NONE
        assert!(MAX_ROWS * 5 <= NONE as usize);
        let mut c = crate::config::ReplayConfig {
            max_fixes: MAX_ROWS + 1,
            ..Default::default()
        };
        assert!(c.validate(i64::MAX).unwrap_err().contains("at most"));
        c.max_fixes = MAX_ROWS;
        c.validate(c.lateness_ms).unwrap();
    }
}
