-- Deferred tasks (DESIGN §11): a task trigger is found from its task instance (firing it,
-- claiming task triggers first, timing deferrals out).
CREATE INDEX idx_task_instance_trigger_id ON task_instance (trigger_id);
