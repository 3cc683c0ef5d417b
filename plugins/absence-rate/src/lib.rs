//! Sickness absence rate (sick hours over contract hours) by department and
//! age band, from one row per employee.

use kanon_guest::prelude::*;

struct AbsenceRate;

const DEPARTMENTS: [&str; 6] = ["finance", "it", "logistics", "operations", "sales", "support"];
const AGE_EDGES: [f64; 6] = [16.0, 25.0, 35.0, 45.0, 55.0, 68.0];

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Employees on fewer contract hours a year are left out.
    #[serde(default)]
    min_contract_hours: f64,
}

impl Plugin for AbsenceRate {
    type Params = Params;

    fn manifest() -> Manifest {
        Manifest {
            name: "absence-rate".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Sickness absence rate by department and age band".into(),
            inputs: vec![dataset(
                "employees",
                &[
                    ("employee_id", ColumnType::Pseudonym),
                    ("department", ColumnType::Text),
                    ("age", ColumnType::Int),
                    ("contract_hours", ColumnType::Float),
                    ("sick_hours", ColumnType::Float),
                ],
            )],
            outputs: vec![TableSpec {
                name: "absence".into(),
                description: "sick hours per contract hour".into(),
                dimensions: vec![labels("department", &DEPARTMENTS), buckets("age_band", &AGE_EDGES)],
                measures: vec![measure("contract_hours", 0.0, 2400.0), measure("sick_hours", 0.0, 2400.0)],
                statistics: vec![
                    Statistic::Count,
                    Statistic::Mean("sick_hours".into()),
                    Statistic::Ratio(("sick_hours".into(), "contract_hours".into())),
                ],
                margins: true,
            }],
            params: vec![param(
                "min_contract_hours",
                ParamType::Float,
                "leave out employees with fewer contract hours a year",
                Some("0"),
            )],
        }
    }

    fn run(params: Params) -> Result<(), Error> {
        let employees = Dataset::open("employees")?;
        let mut table = Table::open("absence")?;
        let age_band = buckets("age_band", &AGE_EDGES);
        let mut departments = LabelCoder::new(&DEPARTMENTS);
        let columns = ["employee_id", "department", "age", "contract_hours", "sick_hours"];
        for batch in employees.scan(&columns)? {
            let ids = batch.pseudonyms(0)?;
            let department = batch.text(1)?;
            let ages = batch.ints(2)?;
            let contract = batch.floats(3)?;
            let sick = batch.floats(4)?;
            departments.extend(department.new_entries());
            for row in 0..batch.rows() {
                if !(batch.is_valid(3, row) && batch.is_valid(4, row)) {
                    continue;
                }
                if contract[row] < params.min_contract_hours {
                    continue;
                }
                let (Some(dept), Some(band)) =
                    (departments.code(department.codes()[row]), age_band.bucket_of(ages[row] as f64))
                else {
                    continue;
                };
                table.add(ids[row], &[dept, band], &[contract[row], sick[row]]);
            }
        }
        Ok(())
    }
}

kanon_guest::export_plugin!(AbsenceRate);
