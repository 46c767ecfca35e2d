"""Example Dagster definitions: summaries over the dbt marts, run by dagster_orchestrate.

Inputs arrive as environment variables set by the tool script: ``SANDBOX_INPUT_WAREHOUSE`` (the
DuckDB file dbt_transform wrote, or a directory holding it; opened read-only) and
``SANDBOX_OUTPUT_DIR`` (where ``sales_report`` writes its files).
"""

# No `from __future__ import annotations` here: Dagster inspects the real annotations of asset
# parameters (context and resource types).
import json
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd


class Warehouse(dg.ConfigurableResource):
    """The dbt output database, read-only."""

    path: str

    def _file(self) -> Path:
        path = Path(self.path)
        if path.is_dir():
            found = sorted(path.glob("*.duckdb"))
            if len(found) != 1:
                msg = f"expected one *.duckdb file in {path}, found {len(found)}"
                raise FileNotFoundError(msg)
            path = found[0]
        return path

    def query(self, sql: str) -> pd.DataFrame:
        with duckdb.connect(str(self._file()), read_only=True) as con:
            return con.execute(sql).df()


class OutputDir(dg.ConfigurableResource):
    path: str

    def file(self, name: str) -> Path:
        return Path(self.path) / name


@dg.asset(
    description="Sales, returns and kept revenue per market segment (from mart_product_sales)."
)
def segment_summary(context: dg.AssetExecutionContext, warehouse: Warehouse) -> pd.DataFrame:
    frame = warehouse.query(
        """
        select segment,
               count(*) as products,
               sum(purchased) as purchased,
               sum(returned) as returned,
               round(sum(returned) / nullif(sum(purchased), 0), 3) as return_rate,
               cast(sum(net_revenue) as double) as net_revenue
        from marts.mart_product_sales
        group by segment
        order by net_revenue desc
        """
    )
    context.add_output_metadata(
        {
            "segments": len(frame),
            "net_revenue": float(frame["net_revenue"].sum()),
            "preview": dg.MetadataValue.md(
                frame.to_markdown(index=False) if _has_tabulate() else frame.to_string()
            ),
        }
    )
    return frame


@dg.asset(description="The ten users who spent most (from mart_user_purchases).")
def top_customers(context: dg.AssetExecutionContext, warehouse: Warehouse) -> pd.DataFrame:
    frame = warehouse.query(
        """
        select user_id, name, country_code, purchases, returns,
               cast(total_spent as double) as total_spent
        from marts.mart_user_purchases
        where purchases > 0
        order by total_spent desc, user_id
        limit 10
        """
    )
    loyal = warehouse.query("select count(*) as n from marts.mart_user_purchases where is_loyal")[
        "n"
    ][0]
    context.add_output_metadata({"rows": len(frame), "loyal_users": int(loyal)})
    return frame


@dg.asset(
    description="segment_summary and top_customers written to the output directory as JSON and CSV."
)
def sales_report(
    context: dg.AssetExecutionContext,
    output: OutputDir,
    segment_summary: pd.DataFrame,
    top_customers: pd.DataFrame,
) -> dg.MaterializeResult:
    report = {
        "segments": segment_summary.to_dict(orient="records"),
        "top_customers": top_customers.to_dict(orient="records"),
    }
    json_file = output.file("sales_report.json")
    json_file.write_text(json.dumps(report, indent=2, default=str))
    csv_file = output.file("segment_summary.csv")
    segment_summary.to_csv(csv_file, index=False)
    context.log.info(f"wrote {json_file.name} and {csv_file.name}")
    return dg.MaterializeResult(
        metadata={
            "files": dg.MetadataValue.json([json_file.name, csv_file.name]),
            "segments": len(segment_summary),
            "top_customer": str(top_customers["name"].iloc[0]) if len(top_customers) else "",
        }
    )


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401 - optional dependency of DataFrame.to_markdown
    except ImportError:
        return False
    return True


summary_job = dg.define_asset_job("summary_job", selection=dg.AssetSelection.all())

defs = dg.Definitions(
    assets=[segment_summary, top_customers, sales_report],
    jobs=[summary_job],
    resources={
        "warehouse": Warehouse(path=dg.EnvVar("SANDBOX_INPUT_WAREHOUSE")),
        "output": OutputDir(path=dg.EnvVar("SANDBOX_OUTPUT_DIR")),
    },
)
