# The worker image for LAIT's Beam pipelines on Dataflow (and other portable runners): Beam's own SDK
# image with LAIT and every stage's packages installed. Beam installs a `--setup_file` package on its
# workers without extras, so `--setup_file ./setup.py` alone gives them only LAIT's core requirements;
# the filter, relevance, features and WARC stages also need Pillow, the language models, torch, ...
#
#   docker build -f docker/dataflow.Dockerfile -t REGION-docker.pkg.dev/PROJECT/REPO/lait:latest .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/lait:latest
#   python -m pipeline.filter ... --runner DataflowRunner --sdk_container_image REGION-docker.pkg.dev/PROJECT/REPO/lait:latest
#
# BEAM_VERSION must be the apache-beam version that launches the job (`pip show apache-beam`), and
# PYTHON_VERSION the launching Python's major.minor: Dataflow requires both to match. Files the workers
# read by path go into the image too: the detector weights of the features stage (e.g. COPY weights/
# /weights/, then --weights /weights/...) and the relevance stage's model folder (--model).
ARG BEAM_VERSION=2.77.0
ARG PYTHON_VERSION=3.11
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}

COPY . /opt/lait
# torch and torchvision are pinned in setup.py; PyPI's Linux wheels of them carry CUDA.
RUN pip install --no-cache-dir "/opt/lait[crawl,beam,features]"
