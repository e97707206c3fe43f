-- Deferred tasks (DESIGN §11): a task trigger is found from its task instance (firing it,
-- claiming task triggers first, timing deferrals out).
CREATE INDEX idx_task_instance_trigger_id ON task_instance (trigger_id);
-- Runs whose task instances changed, in id order: a partial index the planner takes even
-- without statistics (a young PostgreSQL table walked its primary key over every run instead).
CREATE INDEX idx_dag_run_tasks_changed_id ON dag_run (id) WHERE tasks_changed;
