//! The ring of a band's lanes in turn order (see `ranked`).

/// Lanes in turn order: a ring buffer of a power-of-two size, so that the operations of every
/// hand-out (look at the front, move it to the back) are a few instructions.
#[derive(Debug, Default)]
pub(super) struct Ring {
    buf: Vec<u32>,
    head: usize,
    len: usize,
}

impl Ring {
    #[inline(always)]
    pub(super) fn front(&self) -> Option<u32> {
        (self.len > 0).then(|| self.buf[self.head])
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Index mask; a ring that never held a lane has no buffer, and no index is taken then.
    #[inline]
    fn mask(&self) -> usize {
        self.buf.len().wrapping_sub(1)
    }

    #[inline]
    pub(super) fn push_back(&mut self, l: u32) {
        if self.len == self.buf.len() {
            self.grow();
        }
        let i = (self.head + self.len) & self.mask();
        self.buf[i] = l;
        self.len += 1;
    }

    /// Moves the front to the back.
    #[inline(always)]
    pub(super) fn rotate(&mut self) {
        if self.len > 0 {
            let l = self.buf[self.head];
            self.head = (self.head + 1) & self.mask();
            let back = (self.head + self.len - 1) & self.mask();
            self.buf[back] = l;
        }
    }

    /// Takes `l` out, keeping the order of the others: at once from the front (where a lane
    /// that was just served stands), else by a pass over the ring.
    pub(super) fn remove(&mut self, l: u32) {
        let mask = self.mask();
        let Some(i) = (0..self.len).find(|&i| self.buf[(self.head + i) & mask] == l) else {
            return;
        };
        if i == 0 {
            self.head = (self.head + 1) & mask;
        } else {
            for j in i..self.len - 1 {
                self.buf[(self.head + j) & mask] = self.buf[(self.head + j + 1) & mask];
            }
        }
        self.len -= 1;
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let mask = self.buf.len().wrapping_sub(1);
        (0..self.len).map(move |i| self.buf[(self.head + i) & mask])
    }

    #[cold]
    fn grow(&mut self) {
        let buf: Vec<u32> = self.iter().collect();
        let cap = (buf.len() * 2).max(4);
        self.buf = buf;
        self.buf.resize(cap, 0);
        self.head = 0;
    }
}
