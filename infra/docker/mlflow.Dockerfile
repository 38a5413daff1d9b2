# MLflow tracking server with what the team stack needs and the core image lacks: a Postgres driver (the
# backend store; SQLAlchemy's postgresql:// dialect uses psycopg 3) and boto3 (artifacts in the S3 store).
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir "psycopg[binary]>=3.1" "boto3>=1.34"
