-- One Postgres, two databases: Prefect's API and MLflow's tracking/registry store.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
