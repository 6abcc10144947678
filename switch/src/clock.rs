//! The switch's notion of time: whole seconds since the daemon started for
//! ageing, nanoseconds for impairments (delays, rate limits), monotonic. Passed into the forwarding code as a plain number so
//! tests can use any time they like (STYLE §9).

#![forbid(unsafe_code)]

use std::time::Instant;

#[derive(Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Clock {
        Clock { start: Instant::now() }
    }

    /// Seconds since start; wraps after 136 years.
    #[inline]
    pub fn now_secs(&self) -> u32 {
        self.start.elapsed().as_secs() as u32
    }

    /// Nanoseconds since start (every worker shares the start, so these
    /// compare across workers); wraps after 584 years.
    #[inline]
    pub fn now_nanos(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}
