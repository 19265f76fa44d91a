"""What the workers' server process imports once, before it forks each worker (`workers.PRELOAD`).

The modules the workers run (the stream stage and the aggregation and rendering it calls: pandas, reportlab,
boto3), then `gc.freeze()`: the objects imported so far leave the garbage collector's view, so no worker's
collections walk them again (a couple of milliseconds of each report) or write to them (which would copy their
memory pages into every worker).
"""

import gc

import reporting_pipeline.stages.aggregate  # noqa: F401  (build_chunk imports these two when it first runs)
import reporting_pipeline.stages.render  # noqa: F401
import reporting_pipeline.stages.stream  # noqa: F401

gc.freeze()
