//! The two values that say where a VM's requests go: its pool and its priority. Each
//! is validated once, here; everything else passes the checked value around.

use core::fmt;
use core::str::FromStr;

/// A pool's id: its one-character name, an ASCII letter or digit (the vgpu-stub
/// register and the wire structs carry it as one byte).
///
/// ```
/// use vgpu_ring::PoolId;
/// let pool: PoolId = "A".parse().unwrap();
/// assert_eq!((pool.byte(), pool.name()), (b'A', 'A'));
/// assert_eq!(PoolId::try_from(0x42u32), Ok(PoolId::new(b'B').unwrap()));
/// assert!("AB".parse::<PoolId>().is_err() && PoolId::new(b'\n').is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolId(u8);

impl PoolId {
    /// The pool named by ASCII byte `byte`, if it is a letter or digit.
    #[must_use]
    pub const fn new(byte: u8) -> Option<Self> {
        if byte.is_ascii_alphanumeric() { Some(Self(byte)) } else { None }
    }

    /// The name as the byte the wire carries.
    #[must_use]
    pub const fn byte(self) -> u8 {
        self.0
    }

    /// The name as a character.
    #[must_use]
    pub const fn name(self) -> char {
        self.0 as char
    }
}

impl TryFrom<u32> for PoolId {
    type Error = u32;

    /// A register or identity word holding the name in its low byte.
    fn try_from(word: u32) -> Result<Self, u32> {
        u8::try_from(word).ok().and_then(Self::new).ok_or(word)
    }
}

impl FromStr for PoolId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut chars = text.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if c.is_ascii_alphanumeric() => Ok(Self(c as u8)),
            _ => Err(format!("pool name {text:?} must be one ASCII letter or digit")),
        }
    }
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())
    }
}

/// A VM's priority: 0 low, 1 medium, 2 high.
///
/// ```
/// use vgpu_ring::Priority;
/// assert_eq!("high".parse::<Priority>(), Ok(Priority::HIGH));
/// assert_eq!("1".parse::<Priority>(), Ok(Priority::MEDIUM));
/// assert_eq!(Priority::try_from(3u32), Err(3));
/// assert_eq!((Priority::LOW.get(), Priority::LOW.name()), (0, "low"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

impl Priority {
    /// 0.
    pub const LOW: Self = Self(0);
    /// 1.
    pub const MEDIUM: Self = Self(1);
    /// 2.
    pub const HIGH: Self = Self(2);
    /// Every priority, lowest first.
    pub const ALL: [Self; 3] = [Self::LOW, Self::MEDIUM, Self::HIGH];

    /// The priority with value `value`, if it is 0, 1 or 2.
    #[must_use]
    pub const fn new(value: u8) -> Option<Self> {
        if value <= 2 { Some(Self(value)) } else { None }
    }

    /// The value (0–2), as the wire carries it.
    #[must_use]
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The value as an index (0–2), e.g. into a per-priority array.
    #[must_use]
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// `low`, `medium` or `high`, as the original client printed it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "low",
            1 => "medium",
            _ => "high",
        }
    }
}

impl TryFrom<u32> for Priority {
    type Error = u32;

    fn try_from(word: u32) -> Result<Self, u32> {
        u8::try_from(word).ok().and_then(Self::new).ok_or(word)
    }
}

impl FromStr for Priority {
    type Err = String;

    /// `0`, `1`, `2`, `low`, `medium` or `high` (any case, surrounding blanks ignored).
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "0" | "low" => Ok(Self::LOW),
            "1" | "medium" => Ok(Self::MEDIUM),
            "2" | "high" => Ok(Self::HIGH),
            other => Err(format!("priority {other:?} out of range: use 0|1|2 or low|medium|high")),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who a VM is, as the host configured it: the typed form of a slot's
/// [`SlotIdentity`](crate::SlotIdentity) words.
///
/// ```
/// use vgpu_ring::{PoolId, Priority, Request, VmIdentity};
/// let id = VmIdentity { vm_id: 7, pool: PoolId::new(b'A').unwrap(), priority: Priority::MEDIUM };
/// assert_eq!(VmIdentity::from_slot(&id.slot()), Some(id));
/// let honest = Request { vm_id: 7, pool: b'A', priority: 1, ..Request::default() };
/// assert!(id.claimed_by(&honest));
/// assert!(!id.claimed_by(&Request { priority: 2, ..honest }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmIdentity {
    /// VM id.
    pub vm_id: u32,
    /// Pool.
    pub pool: PoolId,
    /// Priority.
    pub priority: Priority,
}

impl VmIdentity {
    /// The slot's identity words for this VM (assigned).
    #[must_use]
    pub const fn slot(&self) -> crate::SlotIdentity {
        crate::SlotIdentity::new(self.vm_id, self.pool, self.priority)
    }

    /// The identity a slot's words hold, if the slot is assigned and the words are valid.
    #[must_use]
    pub fn from_slot(slot: &crate::SlotIdentity) -> Option<Self> {
        if !slot.is_assigned() {
            return None;
        }
        Some(Self { vm_id: slot.vm_id, pool: slot.pool_id()?, priority: slot.priority_level()? })
    }

    /// Whether `request` claims exactly this identity (pool, priority and VM id).
    #[must_use]
    pub fn claimed_by(&self, request: &crate::Request) -> bool {
        request.pool == self.pool.byte()
            && request.priority == self.priority.get()
            && request.vm_id == self.vm_id
    }
}

impl fmt::Display for VmIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vm {} pool {} priority {}", self.vm_id, self.pool, self.priority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, SlotIdentity};

    #[test]
    fn pools_are_one_ascii_letter_or_digit() {
        assert!(PoolId::new(b'z').is_some() && PoolId::new(b'7').is_some());
        for bad in [0u8, b' ', b'-', 0x80, 0xff] {
            assert!(PoolId::new(bad).is_none(), "{bad:#x}");
        }
        assert_eq!(PoolId::try_from(0x141u32), Err(0x141), "only the low byte may be set");
        assert!("".parse::<PoolId>().is_err() && "é".parse::<PoolId>().is_err());
    }

    #[test]
    fn priorities_are_zero_to_two() {
        assert_eq!(Priority::ALL.map(Priority::get), [0, 1, 2]);
        assert_eq!(Priority::new(3), None);
        assert_eq!(" High ".parse::<Priority>(), Ok(Priority::HIGH));
        assert!("3".parse::<Priority>().is_err());
    }

    #[test]
    fn a_scribbled_identity_is_not_an_identity() {
        let id = VmIdentity { vm_id: 1, pool: PoolId::new(b'A').unwrap(), priority: Priority::LOW };
        let mut slot = id.slot();
        slot.priority = 9;
        assert_eq!(VmIdentity::from_slot(&slot), None);
        let unassigned = SlotIdentity { flags: 0, ..id.slot() };
        assert_eq!(VmIdentity::from_slot(&unassigned), None);
        let claim = Request { vm_id: 1, pool: b'A', priority: 0, ..Request::default() };
        assert!(id.claimed_by(&claim));
        assert!(!id.claimed_by(&Request { vm_id: 2, ..claim }));
    }
}
