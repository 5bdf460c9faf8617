"""Is reading a study's runs page by page what makes the readers grow faster than linearly?

MLflow's SQL store pages search_runs by OFFSET, so each page of 1,000 could cost more the further in it starts.
This builds a store of N runs shaped like a study's members (tags, 25 params, 12 metrics) with MLflow's client,
then reads them all with the study's filter, 1,000 per call and in one call of up to 50,000 (MLflow's limit),
twice each, timing every page.  Usage: python bench/reader_paging.py sqlite:////tmp/paging.db 4000"""
import sys
import time

from mlflow.tracking import MlflowClient
from mlflow.entities import Metric, Param

uri, n = sys.argv[1], int(sys.argv[2])
c = MlflowClient(uri)
exp = c.get_experiment_by_name("paging")
if exp is None:
    eid = c.create_experiment("paging")
    t0 = time.time()
    for i in range(n):
        r = c.create_run(eid, run_name=f"m{i}", tags={"study": "paging", "role": "member", "member_key": f"k{i}", "arm": "sgd-coupled"})
        c.log_batch(r.info.run_id, params=[Param(f"p{j}", str(j)) for j in range(25)],
                    metrics=[Metric(f"final_m{j}", 0.1 * j, 0, 0) for j in range(12)])
        c.set_terminated(r.info.run_id)
    print(f"built {n} runs in {time.time() - t0:.0f} s", flush=True)
else:
    eid = exp.experiment_id

def read(page):
    runs, token, pages = [], None, []
    while True:
        t = time.time()
        p = c.search_runs([eid], "tags.study = 'paging' and tags.role = 'member'", max_results=page, page_token=token)
        pages.append(time.time() - t)
        runs.extend(p); token = p.token
        if not token:
            return len(runs), pages

for page in (1000, 50000, 1000, 50000):
    t = time.time(); k, pages = read(page)
    print(f"page size {page}: {k} runs in {time.time() - t:.2f} s; per page {', '.join(f'{x:.2f}' for x in pages)}", flush=True)
