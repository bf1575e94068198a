//! Model usage per owner per day on the embedded store: a map of day items, each add one step under
//! its lock (as DynamoDB's `ADD` is atomic).

use async_trait::async_trait;

use super::MemoryStore;
use crate::store::{StoreError, UsageLedger, UsageReader};
use crate::usage::{Day, DayUsage, Spend};

#[async_trait]
impl UsageLedger for MemoryStore {
    async fn add_usage(&self, owner: &str, day: Day, spend: &Spend) -> Result<u64, StoreError> {
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        Ok(usage.entry(day.key(owner)).or_default().add(spend))
    }
}

#[async_trait]
impl UsageReader for MemoryStore {
    async fn usage(&self, owner: &str, day: Day) -> Result<DayUsage, StoreError> {
        let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        Ok(usage.get(&day.key(owner)).cloned().unwrap_or_default())
    }
}
