//! Data-parallel training across processes: `mpirun -np N yolodistill train …` starts one
//! process (rank) per device, each trains on its shard of every batch, and the gradients are
//! summed across ranks before each optimizer step, so every rank applies the same update.
//! Rank 0 validates, logs and writes the run folder. Without the `mpi` cargo feature, or when
//! not started by a launcher, the world is this one process.

use std::collections::HashMap;

use anyhow::{bail, Result};
use burn::tensor::{Tensor, TensorData};

/// The processes of a training run.
pub struct World {
    rank: usize,
    size: usize,
    #[cfg(feature = "mpi")]
    universe: Option<mpi::environment::Universe>,
}

/// The process count an MPI launcher announces (Open MPI, MPICH's Hydra), if any.
fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].iter().find_map(|k| std::env::var(k).ok()?.parse().ok())
}

impl World {
    /// This process alone.
    pub fn solo() -> World {
        World {
            rank: 0,
            size: 1,
            #[cfg(feature = "mpi")]
            universe: None,
        }
    }

    /// The ranks `mpirun` started (MPI is initialised here and finalised when the world drops),
    /// or this process alone.
    pub fn from_env() -> Result<World> {
        let size = launched_size().unwrap_or(1);
        if size <= 1 {
            return Ok(World::solo());
        }
        #[cfg(feature = "mpi")]
        {
            use mpi::traits::Communicator;
            let Some(universe) = mpi::initialize() else {
                bail!("MPI was already initialised in this process: under mpirun a process runs one training")
            };
            let w = universe.world();
            Ok(World { rank: w.rank() as usize, size: w.size() as usize, universe: Some(universe) })
        }
        #[cfg(not(feature = "mpi"))]
        bail!(
            "started by an MPI launcher with {size} processes, but this build has no MPI support: \
             build with `cargo build --features mpi` (needs Open MPI's development files)"
        )
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The ranks on this machine (they share its CPUs), as the launcher announces them.
    pub fn local_size(&self) -> usize {
        let announced = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"].iter().find_map(|k| std::env::var(k).ok()?.parse().ok());
        if self.size == 1 { 1 } else { announced.unwrap_or(1) }
    }

    /// Rank 0: the process that validates, logs and writes.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Element-wise sum over the ranks, in place (every rank gets the sum).
    pub fn sum(&self, buf: &mut [f64]) {
        #[cfg(feature = "mpi")]
        if let Some(u) = &self.universe {
            use mpi::traits::CommunicatorCollectives;
            let send = buf.to_vec();
            u.world().all_reduce_into(&send[..], buf, mpi::collective::SystemOperation::sum());
        }
        let _ = buf;
    }

    /// [`World::sum`] of a buffer whose length must be the same on every rank (checked first:
    /// ranks that disagree are an error, not a hang).
    pub fn sum_same(&self, buf: &mut [f64]) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        let mut len = [buf.len() as f64];
        self.sum(&mut len);
        if len[0] != (buf.len() * self.size) as f64 {
            bail!("rank {} has {} values to sum but the ranks disagree: they must train alike", self.rank, buf.len());
        }
        self.sum(buf);
        Ok(())
    }

    fn sum_f32(&self, buf: &mut [f32]) {
        #[cfg(feature = "mpi")]
        if let Some(u) = &self.universe {
            use mpi::traits::CommunicatorCollectives;
            let send = buf.to_vec();
            u.world().all_reduce_into(&send[..], buf, mpi::collective::SystemOperation::sum());
        }
        let _ = buf;
    }

    /// Rank 0's `value` on every rank.
    pub fn main_says(&self, value: bool) -> bool {
        let mut v = [if self.is_main() && value { 1.0 } else { 0.0 }];
        self.sum(&mut v);
        v[0] > 0.0
    }

    /// Sums the named gradient tensors over the ranks, in place. Every rank must hold the same
    /// names (the same model and extension): a mismatch is an error, not a silent misalignment.
    pub fn sum_tensors(&self, tensors: &mut HashMap<String, Tensor<1>>) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        let mut names: Vec<String> = tensors.keys().cloned().collect();
        names.sort();
        let sizes: Vec<usize> = names.iter().map(|n| tensors[n].dims()[0]).collect();
        let total: usize = sizes.iter().sum();
        let mut check = [names.len() as f64, total as f64];
        self.sum(&mut check);
        if check != [(names.len() * self.size) as f64, (total * self.size) as f64] {
            bail!("rank {} holds {} gradients ({total} values) but the ranks disagree: they must train the same model", self.rank, names.len());
        }
        let mut flat = Vec::with_capacity(total);
        for n in &names {
            flat.extend(tensors[n].clone().try_into_vec_as::<f32>().expect("f32 gradients"));
        }
        self.sum_f32(&mut flat);
        let mut at = 0;
        for (n, len) in names.iter().zip(sizes) {
            let t = tensors.get_mut(n).expect("a listed name");
            *t = Tensor::from_data(TensorData::new(flat[at..at + len].to_vec(), [len]), &t.device());
            at += len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_solo_world_sums_nothing() {
        let w = World::solo();
        let mut v = [1.0, 2.0];
        w.sum(&mut v);
        assert_eq!(v, [1.0, 2.0]);
        assert!(w.is_main() && w.main_says(true) && !w.main_says(false));
    }
}
