"""Collection progress (征缴进度): paid rates against the policy's targets (任务目标)."""
