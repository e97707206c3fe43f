-- Asset-and-time DAGs (combine = "and") wait for their asset condition at a due slot; the
-- scheduler's time-due query needs to know which DAGs those are.
ALTER TABLE dag ADD COLUMN timetable_asset_gated BOOLEAN NOT NULL DEFAULT FALSE;
