from setuptools import find_packages, setup

# The Dagster family is pinned together: unpinned, pip picks a newer dagster and silently
# falls back to ancient dagster-aws/dagster-k8s releases that do not import.
DAGSTER = [
    "dagster==1.13.27",
    "dagster-webserver==1.13.27",
    "dagster-graphql==1.13.27",
    "dagster-aws==0.29.27",
    "dagster-k8s==0.29.27",
    "dagster-postgres==0.29.27",
]

# Stand-ins for MongoDB, S3 and SMTP used by `reporting-pipeline demo`, `reporting-pipeline dev` and the tests.
# An extra, so the production image (`pip install .`) carries none of them.
LOCAL = [
    "mongomock>=4.3",
    "moto[s3,server]>=5.1",
    "aiosmtpd>=1.4.6",
    # MongoDB-wire server of `reporting-pipeline dev`; it needs Python 3.13, so below that `dev` and the
    # tests that share a database between processes are unavailable (the tests skip).
    "mongoeco>=4.11; python_version >= '3.13'",
    # Only for the DejaVu Sans it ships: Latin, Greek and Cyrillic for `make demo` and the tests on a
    # machine without Debian's Noto fonts (the image installs those).
    "matplotlib>=3.8",
]

setup(
    name="reporting_pipeline",
    version="0.1.0",
    description="Weekly PDF reports for clinical-trial participants, orchestrated by Dagster.",
    packages=find_packages(exclude=["reporting_pipeline_tests*"]),
    # The message catalogs are read from their .po sources at run time: they ship with the package.
    package_data={"reporting_pipeline": ["locale/*.pot", "locale/*/LC_MESSAGES/*.po"]},
    python_requires=">=3.11",
    install_requires=[
        *DAGSTER,
        "pymongo>=4.10,<5",
        "boto3>=1.35",
        "pandas>=2.2",
        "reportlab>=4.2",
        "rl_accel>=0.9",  # reportlab's C accelerators: a quarter less render time
        # Text in any script: HarfBuzz shapes and subsets fonts, python-bidi orders right-to-left text.
        "uharfbuzz>=0.50",
        "python-bidi>=0.6,<0.7",  # render uses bidi.algorithm's levels (the Rust API gives only strings)
        "Pillow>=11",
        # The participant's language: gettext catalogs read from their .po sources, dates and numbers by CLDR.
        "Babel>=2.12",
        # Subscription API.
        "fastapi>=0.115",
        "uvicorn>=0.30",
        "pyjwt[crypto]>=2.9",
        # DKIM signatures on the report emails.
        "dkimpy>=1.1",
    ],
    extras_require={
        "local": LOCAL,
        "dev": [
            *LOCAL,
            "pytest>=8.4",  # pytest.ini: --disable-plugin-autoload
            "pytest-xdist>=3.6",  # `make test` runs the suite on two processes
            "httpx>=0.27",
            "pypdf>=5",
            "selenium>=4.20",
            "fonttools>=4.50",  # render tests read the embedded font programs
            "schemathesis>=4.32,<5",  # the API tests fuzz it from its OpenAPI document
            "kubernetes-validate>=1.31",  # the production tests check manifests against Kubernetes' schemas
            "pip-tools>=7.5",  # `make lock`: deploy/requirements.lock, the image's pinned and hashed dependencies
        ],
    },
    entry_points={
        "console_scripts": ["reporting-pipeline=reporting_pipeline.apps.cli:main"],
    },
)
