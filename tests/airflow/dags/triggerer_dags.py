"""DAGs the triggerer's Airflow-bridge tests trigger through Airflow 3's REST API.

All have schedule=None (they run only when triggered), no catchup and no retries, so a run
finishes in seconds. scripts/services.sh (ensure_airflow) unpauses the first three and pauses
`triggerer_paused` after every start, whatever an earlier run left in the database.
"""

from __future__ import annotations

import time
from datetime import datetime

from airflow.sdk import dag, get_current_context, task

COMMON = dict(
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=16,
    default_args={"retries": 0},
    tags=["triggerer-test"],
)


@dag(dag_id="triggerer_succeeds", is_paused_upon_creation=False, **COMMON)
def triggerer_succeeds():
    @task
    def echo_conf():
        conf = get_current_context()["dag_run"].conf
        print(f"triggerer_succeeds conf: {conf!r}")
        return conf

    echo_conf()


@dag(dag_id="triggerer_fails", is_paused_upon_creation=False, **COMMON)
def triggerer_fails():
    @task
    def boom():
        raise RuntimeError("triggerer_fails fails on purpose")

    boom()


@dag(dag_id="triggerer_slow", is_paused_upon_creation=False, **COMMON)
def triggerer_slow():
    @task
    def sleep_then_succeed():
        time.sleep(5)
        return "slept 5 s"

    sleep_then_succeed()


@dag(dag_id="triggerer_paused", is_paused_upon_creation=True, **COMMON)
def triggerer_paused():
    @task
    def never_runs_while_paused():
        print("triggerer_paused ran")

    never_runs_while_paused()


triggerer_succeeds()
triggerer_fails()
triggerer_slow()
triggerer_paused()
