//! What several fuzz targets share (included with `#[path]`; not a target
//! itself): a counting allocator, to check that a core's buffers stay
//! bounded, and the split of one input into client bytes and control bytes.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the bytes the Rust side holds (libFuzzer's own allocations do
/// not go through it).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated through Rust and not yet freed.
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Control bytes come from the end of the input, client bytes from the
/// front, so both stay meaningful as the fuzzer mutates.
pub struct Input<'a> {
    pub data: &'a [u8],
}

impl Input<'_> {
    pub fn control(&mut self) -> u8 {
        match self.data.split_last() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn client(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (chunk, rest) = self.data.split_at(n);
        self.data = rest;
        chunk
    }
}
