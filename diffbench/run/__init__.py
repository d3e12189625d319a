"""Running a suite: schema, plan, preparation, sampling, the cell and its record, executors, run directories."""
