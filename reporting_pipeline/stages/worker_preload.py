"""What the workers' server process imports once, before it forks each worker (`workers.PRELOAD`).

The modules the workers run (the stream stage and the aggregation and rendering it calls: pandas, reportlab,
boto3) and botocore's S3 model, loaded with the garbage collector off, then `gc.freeze()`: Python's documented
recipe for a process that forks without exec. Collections during the imports would only walk the objects they
make, which all stay (some 150,000; about a tenth of the imports' CPU). Frozen, they leave the collector's
view, so no worker's collections walk them again (a couple of milliseconds of each report) or write to them
(which would copy their memory pages into every worker).
"""

import contextlib
import gc

gc.disable()
try:
    # Each worker makes an S3 client (`stream._s3`); `make_client` imports these two on first use.
    import boto3  # noqa: F401
    import botocore.config  # noqa: F401

    import reporting_pipeline.stages.aggregate  # noqa: F401  (build_chunk imports these two when it first runs)
    import reporting_pipeline.stages.render  # noqa: F401
    import reporting_pipeline.stages.stream  # noqa: F401
    from reporting_pipeline.services.objectstore import load_client_models

    # Each worker's client is then made from models loaded once here (~17 ms instead of ~100). Only a saving:
    # whatever goes wrong here, a worker making its own client meets it again and reports it.
    with contextlib.suppress(Exception):
        load_client_models()
finally:
    # On even if an import failed (multiprocessing ignores a preload's ImportError): workers inherit the state.
    gc.freeze()
    gc.enable()
