//! A first-fit allocator for the client's arena: input and output buffers of requests
//! in flight.

/// Free ranges of the arena, sorted by offset, never adjacent (merged on free).
#[derive(Debug)]
pub(crate) struct ArenaAllocator {
    free: Vec<(u32, u32)>,
}

/// Allocation granularity: 64 bytes (a cache line; f32 data stays aligned).
const ALIGN: u32 = 64;

impl ArenaAllocator {
    pub(crate) fn new(size: u32) -> Self {
        Self { free: vec![(0, size)] }
    }

    /// A range of at least `len` bytes (`len` 0 gives an empty range at offset 0).
    pub(crate) fn alloc(&mut self, len: u32) -> Option<(u32, u32)> {
        if len == 0 {
            return Some((0, 0));
        }
        let len = len.checked_next_multiple_of(ALIGN)?;
        let i = self.free.iter().position(|&(_, free)| free >= len)?;
        let (offset, free) = self.free[i];
        if free == len {
            self.free.remove(i);
        } else {
            self.free[i] = (offset + len, free - len);
        }
        Some((offset, len))
    }

    /// Give back a range returned by [`alloc`](Self::alloc).
    pub(crate) fn free(&mut self, (offset, len): (u32, u32)) {
        if len == 0 {
            return;
        }
        let i = self.free.partition_point(|&(o, _)| o < offset);
        self.free.insert(i, (offset, len));
        // Merge with the next, then with the previous range.
        if i + 1 < self.free.len() && offset + len == self.free[i + 1].0 {
            self.free[i].1 += self.free.remove(i + 1).1;
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == offset {
            self.free[i - 1].1 += self.free.remove(i).1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_first_fit_and_merges_on_free() {
        let mut a = ArenaAllocator::new(256);
        let x = a.alloc(10).unwrap();
        let y = a.alloc(64).unwrap();
        let z = a.alloc(100).unwrap();
        assert_eq!((x, y, z), ((0, 64), (64, 64), (128, 128)));
        assert_eq!(a.alloc(1), None);
        a.free(y);
        assert_eq!(a.alloc(128), None, "64 free bytes are not enough");
        a.free(x);
        assert_eq!(a.alloc(128), Some((0, 128)), "freed neighbours merged");
        a.free((0, 128));
        a.free(z);
        assert_eq!(a.alloc(256), Some((0, 256)));
        assert_eq!(a.alloc(0), Some((0, 0)));
    }
}
