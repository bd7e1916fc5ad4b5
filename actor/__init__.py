"""Actor-side building blocks: exploration schedules and n-step transition assembly."""
